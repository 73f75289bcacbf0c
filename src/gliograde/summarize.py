"""``python -m gliograde.summarize SWEEP_DIR``: the table of a multirun, one row per job.

Every finished job (a folder with metrics.json and config.yaml) gives one row: its overrides
(from ``.hydra/overrides.yaml``, else the config keys that differ between jobs) and its
validation and test patient-level metrics with honest intervals (recomputed from the job's
``predictions_{val,test}.csv``), sorted by the monitored metric; failed and unfinished jobs
follow, with how they ended. Written into SWEEP_DIR, all at once and only when complete, as
``sweep_summary.csv``, ``sweep_summary.md`` and ``sweep_summary.png`` (the monitored metric
against each swept parameter).

A cross-validation sweep (``data.fold`` the only swept key) also gets ``cv_summary.csv`` and
``cv_summary.json`` (see :mod:`gliograde.sweeps.cv_summary`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gliograde.files.atomic import write_files
from gliograde.sweeps.cv_summary import FOLD_KEY, cv_summary, format_summary, is_cross_validation, summarize
from gliograde.errors import exit_on_user_error
from gliograde.evaluation.intervals import UNRELIABLE_NOTE, format_interval
from gliograde.evaluation.progress import progress
from gliograde.files.output_folder import output_errors, writable
from gliograde.sweeps.plot import plot_png
from gliograde.sweeps.table import (
    DEFAULT_MONITOR,
    FINISHED,
    NO_OBJECTIVE_STATUS,
    STAGES,
    SummaryError,
    find_jobs,
    job_dirs,
    job_overrides,
    read_patient_predictions,
    swept_keys,
    sweep_table,
)

__all__ = [
    "DEFAULT_MONITOR",
    "FOLD_KEY",
    "SummaryError",
    "format_summary",
    "format_sweep",
    "is_cross_validation",
    "job_dirs",
    "job_overrides",
    "main",
    "read_patient_predictions",
    "summarize",
    "summarize_sweep",
    "sweep_markdown",
    "sweep_table",
    "swept_keys",
]

SHOWN = ("auroc", "balanced_accuracy")
OUTPUTS = ("sweep_summary.csv", "sweep_summary.md", "sweep_summary.png")


def summarize_sweep(
    sweep_dir: str | Path, resamples: int = 1000, level: float = 0.95, show_progress: bool = False
) -> tuple[pd.DataFrame, list[str], str, str]:
    """Write sweep_summary.{csv,md,png} into ``sweep_dir`` (together, once all are made); return
    what :func:`sweep_table` does."""
    sweep_dir = Path(sweep_dir)
    table, swept, monitor, mode = _scored(sweep_dir, resamples, level, show_progress)
    write_files(_sweep_files(sweep_dir, table, swept, monitor, mode, level))
    return table, swept, monitor, mode


def _scored(
    sweep_dir: Path, resamples: int, level: float, show_progress: bool
) -> tuple[pd.DataFrame, list[str], str, str]:
    total = len(find_jobs(sweep_dir))
    with progress(desc="scoring jobs", total=total, enabled=show_progress, command="summarize") as bar:

        started = []

        def on_job(job: Any) -> None:
            if show_progress and not started:  # the folder passed its checks: the long part starts
                started.append(job)
                print(
                    f"Scoring {total} jobs in {sweep_dir} ({resamples} bootstrap resamples per split)",
                    file=sys.stderr,
                )
            bar.set_postfix_str(f"job {job.name}", refresh=False)
            bar.update(1)

        return sweep_table(sweep_dir, resamples, level, on_job=on_job)


def _sweep_files(
    sweep_dir: Path, table: pd.DataFrame, swept: list[str], monitor: str, mode: str, level: float
) -> dict[Path, str | bytes]:
    finished = table[table["status"].isin([FINISHED, NO_OBJECTIVE_STATUS])]
    return {
        sweep_dir / "sweep_summary.csv": table.to_csv(index=False, lineterminator="\n"),
        sweep_dir / "sweep_summary.md": sweep_markdown(table, swept, monitor, mode, level) + "\n",
        sweep_dir / "sweep_summary.png": plot_png(finished, swept, monitor),
    }


def _entry(row: pd.Series, key: str) -> dict[str, Any]:
    def get(name: str) -> Any:
        value = row.get(name)
        return None if value is None or (isinstance(value, float) and not np.isfinite(value)) else value

    return {
        "value": get(key),
        "ci_low": get(f"{key}_ci_low"),
        "ci_high": get(f"{key}_ci_high"),
        "unreliable": bool(get(f"{key}_unreliable")),
        "ci_note": get(f"{key}_ci_note"),
    }


def sweep_markdown(table: pd.DataFrame, swept: list[str], monitor: str, mode: str, level: float) -> str:
    """A Markdown table of the finished jobs (job, swept parameters, monitored metric, AUROC and
    balanced accuracy), then a list of the jobs that failed or did not finish."""
    shown = [f"{s}/patient_{m}" for s in STAGES for m in SHOWN if f"{s}/patient_{m}" in table]
    columns = ["job", *swept, *([monitor] if monitor not in shown and monitor in table else []), *shown]
    pct = int(round(level * 100))
    header = [f"{c} [{pct}% CI]" if c in shown else c for c in columns]
    lines = [
        f"Sorted by {monitor} ({'highest' if mode == 'max' else 'lowest'} first).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    flagged = False
    done = table["status"].isin([FINISHED, NO_OBJECTIVE_STATUS])
    for _, row in table[done].iterrows():
        cells = []
        for column in columns:
            if column in shown:
                entry = _entry(row, column)
                flagged |= entry["unreliable"] and entry["value"] is not None
                cells.append(format_interval(entry))
            else:
                cells.append(_cell(row.get(column)))
        lines.append("| " + " | ".join(cells) + " |")
    if flagged:
        lines += ["", UNRELIABLE_NOTE]
    others = table[~done | (table["status"] == NO_OBJECTIVE_STATUS)]
    if len(others):
        lines += ["", "Jobs without a result:", ""]
        for _, row in others.iterrows():
            params = ", ".join(f"{k}={_cell(row.get(k))}" for k in swept)
            no_objective = row["status"] == NO_OBJECTIVE_STATUS
            why = "finished, but logged no objective" if no_objective else row["error"]
            lines.append(f"- job {row['job']} ({params}): {row['status']}: {why}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_sweep(table: pd.DataFrame, swept: list[str], monitor: str) -> str:
    """The best jobs first: job, swept values and the monitored metric with its interval; then
    each job that did not finish, and why."""
    done = table[table["status"].isin([FINISHED, NO_OBJECTIVE_STATUS])]
    lines = [f"{len(done)} jobs, best {monitor} first; swept: {', '.join(swept) or 'nothing'}"]
    for _, row in table.iterrows():
        params = " ".join(f"{k}={_cell(row.get(k))}" for k in swept)
        status = row["status"]
        if status in (FINISHED, NO_OBJECTIVE_STATUS):
            note = "  (no objective: the trial failed)" if status == NO_OBJECTIVE_STATUS else ""
            lines.append(f"  job {row['job']:<4} {format_interval(_entry(row, monitor)):<26} {params}{note}")
        else:
            lines.append(f"  job {row['job']:<4} {status.upper()}: {row['error']}  {params}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gliograde.summarize", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun directory, e.g. logs/train/multiruns/DATE_TIME"
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="patient resamples for the bootstrap-based intervals"
    )
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if not 0 < args.level < 1:
            raise SummaryError(f"--level {args.level} must be in (0, 1), e.g. 0.95")
        if args.bootstrap < 0:
            raise SummaryError(f"--bootstrap {args.bootstrap} must be 0 or more")
        if args.sweep_dir.is_dir() and not writable(args.sweep_dir):  # before the scoring, not after
            raise SummaryError(f"{args.sweep_dir}: cannot be written, so its summary cannot be stored there")
        table, swept, monitor, mode = _scored(args.sweep_dir, args.bootstrap, args.level, show_progress=True)
        files = _sweep_files(args.sweep_dir, table, swept, monitor, mode, args.level)
        summary = None
        if is_cross_validation(args.sweep_dir):
            summary, cv_files = cv_summary(args.sweep_dir, args.bootstrap, args.level)
            files.update(cv_files)
        with output_errors(args.sweep_dir, f"the summary in {args.sweep_dir}", "free space and run it again"):
            write_files(files)
    print(format_sweep(table, swept, monitor))
    if summary is not None:
        print(format_summary(summary))
    print(f"Wrote {', '.join(path.name for path in files)} in {args.sweep_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

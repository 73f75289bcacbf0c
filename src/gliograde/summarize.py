"""``python -m gliograde.summarize SWEEP_DIR``: the table of a multirun, one row per job.

Every finished job (a folder with metrics.json and config.yaml) gives one row: its overrides
(from ``.hydra/overrides.yaml``, else the config keys that differ between jobs) and its
validation and test patient-level metrics with honest intervals (recomputed from the job's
``predictions_{val,test}.csv``), sorted by the monitored metric. Written into SWEEP_DIR as
``sweep_summary.csv``, ``sweep_summary.md`` and ``sweep_summary.png`` (the monitored metric
against each swept parameter).

A cross-validation sweep (``data.fold`` the only swept key) also gets ``cv_summary.csv`` and
``cv_summary.json``: each fold's patient-level metrics, their mean and standard deviation, and
the folds' out-of-fold validation predictions pooled into one metric set with intervals.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from gliograde.atomic import write_frame, write_text
from gliograde.errors import GliogradeError, exit_on_user_error
from gliograde.evaluation.intervals import UNRELIABLE_NOTE, format_interval, patient_intervals
from gliograde.patient_scores import table_scores
from gliograde.evaluation.metrics import METRICS
from gliograde.tables import read_table

STAGES = ("val", "test")
SHOWN = ("auroc", "balanced_accuracy")
FOLD_KEY = "data.fold"
DEFAULT_MONITOR = "val/patient_auroc"


class SummaryError(GliogradeError, ValueError):
    """The folder is not a finished sweep."""


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Finished jobs below ``sweep_dir`` (folders holding metrics.json and config.yaml)."""
    jobs = [p.parent for p in sweep_dir.glob("*/metrics.json") if (p.parent / "config.yaml").is_file()]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def _finished_jobs(sweep_dir: Path) -> list[Path]:
    if not sweep_dir.is_dir():
        raise SummaryError(
            f"{sweep_dir}: no such directory; pass a multirun directory (logs/train/multiruns/...)"
        )
    jobs = job_dirs(sweep_dir)
    if not jobs:
        raise SummaryError(f"{sweep_dir}: no finished jobs (folders with metrics.json and config.yaml)")
    return jobs


# ------------------------------------------------------------------------------ any sweep
def job_overrides(jobs: list[Path]) -> list[dict[str, str]]:
    """Each job's overrides as ``{key: value}``: its ``.hydra/overrides.yaml`` when every job
    has one, else the resolved config keys whose values differ between the jobs."""
    files = [job / ".hydra" / "overrides.yaml" for job in jobs]
    if all(f.is_file() for f in files):
        result = []
        for f in files:
            items = OmegaConf.to_container(OmegaConf.load(f)) or []
            pairs = (str(item).split("=", 1) for item in items if "=" in str(item))
            result.append({k.lstrip("+~"): v for k, v in pairs})
        return result
    flat = [_flatten(OmegaConf.to_container(OmegaConf.load(job / "config.yaml"))) for job in jobs]
    keys = sorted({k for f in flat for k in f if not k.startswith(("paths.", "hydra."))})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    return [{k: _text(f.get(k)) for k in varying} for f in flat]


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def swept_keys(overrides: list[dict[str, str]]) -> list[str]:
    """Override keys whose value is not the same in every job."""
    keys = sorted({k for o in overrides for k in o})
    return [k for k in keys if len({o.get(k) for o in overrides}) > 1]


def read_patient_predictions(path: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``(classes, patients, labels, positive-class probabilities, scores)`` of the labelled
    patients in a ``predictions_<stage>.csv``; scores are what AUROC ranks (the log-odds, see
    :mod:`gliograde.patient_scores`)."""
    table = read_table(path)
    prob_columns = [str(c) for c in table.columns if str(c).startswith("prob_")]
    classes = [c[len("prob_") :] for c in prob_columns]
    if len(classes) != 2:
        raise SummaryError(f"{path}: the summary covers two classes; found columns {prob_columns}")
    missing = [c for c in ("patient_id", "label") if c not in table]
    if missing:
        raise SummaryError(f"{path}: missing column(s) {missing}; expected a patient predictions file")
    rows = table[table["label"] != ""].to_dict("records")
    unknown = [r["label"] for r in rows if r["label"] not in classes]
    if unknown:
        raise SummaryError(f"{path}: label {unknown[0]!r} is not one of {classes}")
    labels = np.array([classes.index(r["label"]) for r in rows], dtype=int)
    probs = np.array([float(r[prob_columns[1]]) for r in rows], dtype=float)
    return classes, [r["patient_id"] for r in rows], labels, probs, table_scores(rows, prob_columns[1])


def _job_row(
    job: Path, overrides: dict[str, str], monitor: str, resamples: int, level: float
) -> dict[str, Any]:
    metrics = json.loads((job / "metrics.json").read_text())
    row: dict[str, Any] = {"job": job.name, **overrides}
    for stage in STAGES:
        path = job / f"predictions_{stage}.csv"
        if path.is_file():
            _, _, labels, probs, scores = read_patient_predictions(path)
            intervals = patient_intervals(labels, probs, level=level, resamples=resamples, scores=scores)
            row[f"{stage}/patient_count"] = len(labels)
            for name, entry in intervals.items():
                key = f"{stage}/patient_{name}"
                row[key] = entry["value"]
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = entry["ci_low"], entry["ci_high"]
                row[f"{key}_unreliable"] = entry["unreliable"]
        else:  # point values only, as training logged them
            for name in METRICS:
                row[f"{stage}/patient_{name}"] = metrics.get(f"{stage}/patient_{name}")
    for key, value in metrics.items():  # e.g. the best-so-far values, or a slice-level monitor
        if ("/patient_" in key or key == monitor) and key not in row:
            row[key] = value
    row["run_dir"] = str(job)
    return row


def sweep_table(
    sweep_dir: str | Path, resamples: int = 1000, level: float = 0.95
) -> tuple[pd.DataFrame, list[str], str, str]:
    """``(table, swept keys, monitor, monitor mode)``: one row per finished job, best first."""
    sweep_dir = Path(sweep_dir)
    jobs = _finished_jobs(sweep_dir)
    overrides = job_overrides(jobs)
    configs = [OmegaConf.load(job / "config.yaml") for job in jobs]
    monitors = {(str(c.get("monitor", DEFAULT_MONITOR)), str(c.get("monitor_mode", "max"))) for c in configs}
    if len(monitors) > 1:
        raise SummaryError(
            f"{sweep_dir}: the jobs monitor different metrics {sorted(monitors)}, so no one order ranks "
            "them; summarize sweeps that share monitor and monitor_mode"
        )
    monitor, mode = monitors.pop()
    table = pd.DataFrame([_job_row(j, o, monitor, resamples, level) for j, o in zip(jobs, overrides)])
    if monitor in table:
        table = table.sort_values(monitor, ascending=mode == "min", na_position="last", kind="stable")
    return table.reset_index(drop=True), swept_keys(overrides), monitor, mode


def summarize_sweep(
    sweep_dir: str | Path, resamples: int = 1000, level: float = 0.95
) -> tuple[pd.DataFrame, list[str], str, str]:
    """Write sweep_summary.{csv,md,png} into ``sweep_dir``; return what :func:`sweep_table` does."""
    sweep_dir = Path(sweep_dir)
    table, swept, monitor, mode = sweep_table(sweep_dir, resamples, level)
    write_frame(sweep_dir / "sweep_summary.csv", table)
    write_text(sweep_dir / "sweep_summary.md", sweep_markdown(table, swept, monitor, mode, level) + "\n")
    _write_plot(table, swept, monitor, sweep_dir / "sweep_summary.png")
    return table, swept, monitor, mode


def _entry(row: pd.Series, key: str) -> dict[str, Any]:
    def get(name: str) -> Any:
        value = row.get(name)
        return None if value is None or (isinstance(value, float) and not np.isfinite(value)) else value

    return {
        "value": get(key),
        "ci_low": get(f"{key}_ci_low"),
        "ci_high": get(f"{key}_ci_high"),
        "unreliable": bool(get(f"{key}_unreliable")),
    }


def sweep_markdown(table: pd.DataFrame, swept: list[str], monitor: str, mode: str, level: float) -> str:
    """A Markdown table: job, swept parameters, monitored metric, AUROC and balanced accuracy."""
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
    for _, row in table.iterrows():
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
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _write_plot(table: pd.DataFrame, swept: list[str], monitor: str, path: Path) -> None:
    """The monitored metric (with its interval where known) against each swept parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = swept or ["job"]
    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.6), squeeze=False)
    y = pd.to_numeric(table.get(monitor, pd.Series(np.nan, index=table.index)), errors="coerce")
    low = pd.to_numeric(table.get(f"{monitor}_ci_low", y), errors="coerce")
    high = pd.to_numeric(table.get(f"{monitor}_ci_high", y), errors="coerce")
    for ax, param in zip(axes[0], params):
        raw = table[param].astype(str) if param in table else pd.Series("", index=table.index)
        numeric = pd.to_numeric(raw, errors="coerce")
        if numeric.notna().all():
            x, ticks = numeric.to_numpy(), None
            if (x > 0).all() and x.max() / x.min() >= 100:
                ax.set_xscale("log")  # learning rates and weight decays span decades
        else:
            ticks = sorted(raw.unique())
            x = raw.map({t: i for i, t in enumerate(ticks)}).to_numpy(dtype=float)
        errors = np.vstack([(y - low).fillna(0).clip(lower=0), (high - y).fillna(0).clip(lower=0)])
        ax.errorbar(x, y, yerr=errors, fmt="o", capsize=3)
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right")
        ax.set_xlabel(param)
        ax.set_ylabel(monitor)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------- cross-validation
def is_cross_validation(sweep_dir: str | Path) -> bool:
    """True when the jobs differ by ``data.fold`` only."""
    jobs = _finished_jobs(Path(sweep_dir))
    return swept_keys(job_overrides(jobs)) in ([FOLD_KEY], []) and all(
        OmegaConf.load(j / "config.yaml").data.get("fold") is not None for j in jobs
    )


def summarize(sweep_dir: str | Path, resamples: int = 1000, level: float = 0.95) -> dict[str, Any]:
    """Build, write (cv_summary.csv, cv_summary.json) and return the fold summary of ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    jobs = _finished_jobs(sweep_dir)
    folds = []
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        fold = OmegaConf.load(job / "config.yaml").data.get("fold")
        patient = {k: v for k, v in metrics.items() if "/patient_" in k and isinstance(v, (int, float))}
        folds.append({"fold": fold if fold is not None else job.name, "run_dir": str(job), **patient})
    names = sorted({k for row in folds for k in row if "/patient_" in k})
    table = np.array([[row.get(name, np.nan) for name in names] for row in folds], dtype=float)
    mean = dict(zip(names, np.nanmean(table, axis=0).tolist()))
    std = dict(
        zip(names, (np.nanstd(table, axis=0, ddof=1) if len(folds) > 1 else np.zeros(len(names))).tolist())
    )
    summary: dict[str, Any] = {"n_folds": len(folds), "folds": folds, "mean": mean, "std": std}
    pooled = _pooled_out_of_fold(jobs, resamples, level)
    if pooled is not None:
        summary["pooled_val"] = pooled

    header = ["fold", "run_dir", *names]
    rows = [[row["fold"], row["run_dir"], *(row.get(n, "") for n in names)] for row in folds]
    rows.append(["mean", "", *(mean[n] for n in names)])
    rows.append(["std", "", *(std[n] for n in names)])
    # object cells: each written as str() gives it (a fold number stays 1, not 1.0)
    write_frame(sweep_dir / "cv_summary.csv", pd.DataFrame(rows, columns=header, dtype=object))
    write_text(sweep_dir / "cv_summary.json", json.dumps(_json_safe(summary), indent=2) + "\n")
    return summary


def _pooled_out_of_fold(jobs: list[Path], resamples: int, level: float) -> dict[str, Any] | None:
    """Every fold's validation patients pooled (each patient once) into one metric set."""
    pooled: dict[str, tuple[int, float, float]] = {}
    classes: list[str] | None = None
    for job in jobs:
        path = job / "predictions_val.csv"
        if not path.is_file():
            return None
        classes, patients, labels, probs, scores = read_patient_predictions(path)
        for patient, label, prob, score in zip(patients, labels, probs, scores):
            if patient in pooled:
                raise SummaryError(
                    f"patient {patient} is in the validation fold of two jobs: "
                    "not a cross-validation sweep (use data.folds=K data.fold=0,...,K-1)"
                )
            pooled[patient] = (int(label), float(prob), float(score))
    labels = np.array([label for label, _, _ in pooled.values()], dtype=int)
    probs = np.array([p for _, p, _ in pooled.values()], dtype=float)
    scores = np.array([s for _, _, s in pooled.values()], dtype=float)
    metrics = patient_intervals(labels, probs, level=level, resamples=resamples, scores=scores)
    return {"n_patients": len(labels), "classes": classes, "metrics": metrics}


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def format_summary(summary: dict[str, Any]) -> str:
    """Each fold's main patient-level metrics, then mean ± std, then the pooled figures."""
    shown = [
        n
        for n in (
            "val/patient_auroc",
            "val/patient_balanced_accuracy",
            "test/patient_auroc",
            "test/patient_balanced_accuracy",
        )
        if n in summary["mean"]
    ]
    width = max(len(n) for n in shown) if shown else 10
    lines = ["fold  " + "  ".join(f"{n:>{width}}" for n in shown)]
    for row in summary["folds"]:
        lines.append(
            f"{str(row['fold']):<5} " + "  ".join(f"{row.get(n, float('nan')):>{width}.4f}" for n in shown)
        )
    spread = [f"{summary['mean'][n]:.4f} ± {summary['std'][n]:.4f}" for n in shown]
    lines.append("mean  " + "  ".join(f"{text:>{width}}" for text in spread))
    pooled = summary.get("pooled_val")
    if pooled:
        auc = pooled["metrics"]["auroc"]
        bal = pooled["metrics"]["balanced_accuracy"]
        lines.append(
            f"pooled out-of-fold validation ({pooled['n_patients']} patients): "
            f"AUROC {format_interval(auc)}, balanced accuracy {format_interval(bal)}"
        )
        if auc["unreliable"] or bal["unreliable"]:
            lines.append(UNRELIABLE_NOTE)
    return "\n".join(lines)


def format_sweep(table: pd.DataFrame, swept: list[str], monitor: str) -> str:
    """The best jobs first: job, swept values and the monitored metric with its interval."""
    lines = [f"{len(table)} jobs, best {monitor} first; swept: {', '.join(swept) or 'nothing'}"]
    for _, row in table.iterrows():
        params = " ".join(f"{k}={row.get(k)}" for k in swept)
        lines.append(f"  job {row['job']:<4} {format_interval(_entry(row, monitor)):<26} {params}")
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
        table, swept, monitor, _ = summarize_sweep(args.sweep_dir, args.bootstrap, args.level)
        cross_validation = is_cross_validation(args.sweep_dir)
        summary = summarize(args.sweep_dir, args.bootstrap, args.level) if cross_validation else None
    print(format_sweep(table, swept, monitor))
    names = ", ".join(f"sweep_summary.{ext}" for ext in ("csv", "md", "png"))
    if summary is not None:
        print(format_summary(summary))
        names += ", cv_summary.csv, cv_summary.json"
    print(f"Wrote {names} in {args.sweep_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

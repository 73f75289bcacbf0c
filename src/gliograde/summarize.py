"""``python -m gliograde.summarize SWEEP_DIR``: the cross-validation table of a sweep.

Reads every job directory's metrics.json (and its fold from config.yaml), writes
``cv_summary.csv`` and ``cv_summary.json`` into SWEEP_DIR with each fold's patient-level
metrics and their mean and standard deviation, and pools the folds' out-of-fold validation
predictions into patient-level metrics with bootstrap intervals.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from gliograde.atomic import write_csv, write_text
from gliograde.errors import GliogradeError, exit_on_user_error
from gliograde.evaluation.metrics import binary_metrics, bootstrap_intervals


class SummaryError(GliogradeError, ValueError):
    """The folder is not a finished sweep."""


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Finished jobs below ``sweep_dir`` (folders holding metrics.json and config.yaml)."""
    jobs = [p.parent for p in sweep_dir.glob("*/metrics.json") if (p.parent / "config.yaml").is_file()]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def summarize(sweep_dir: str | Path, resamples: int = 1000) -> dict[str, Any]:
    """Build, write and return the summary of the sweep in ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    jobs = job_dirs(sweep_dir)
    if not jobs:
        raise SummaryError(f"{sweep_dir}: no finished jobs (folders with metrics.json and config.yaml)")
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
    pooled = _pooled_out_of_fold(jobs, resamples)
    if pooled is not None:
        summary["pooled_val"] = pooled

    header = ["fold", "run_dir", *names]
    rows = [[row["fold"], row["run_dir"], *(row.get(n, "") for n in names)] for row in folds]
    rows.append(["mean", "", *(mean[n] for n in names)])
    rows.append(["std", "", *(std[n] for n in names)])
    write_csv(sweep_dir / "cv_summary.csv", header, rows)
    write_text(sweep_dir / "cv_summary.json", json.dumps(_json_safe(summary), indent=2) + "\n")
    return summary


def _pooled_out_of_fold(jobs: list[Path], resamples: int) -> dict[str, Any] | None:
    """Every fold's validation patients pooled (each patient once) into one metric set."""
    rows: dict[str, tuple[int, float]] = {}
    classes: list[str] | None = None
    for job in jobs:
        path = job / "predictions_val.csv"
        if not path.is_file():
            return None
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            prob_columns = [c for c in reader.fieldnames or [] if c.startswith("prob_")]
            classes = [c[len("prob_") :] for c in prob_columns]
            if len(classes) != 2:
                return None
            for row in reader:
                if row["patient_id"] in rows:
                    raise SummaryError(
                        f"patient {row['patient_id']} is in the validation fold of two jobs: "
                        "not a cross-validation sweep (use data.folds=K data.fold=0,...,K-1)"
                    )
                rows[row["patient_id"]] = (classes.index(row["label"]), float(row[prob_columns[1]]))
    labels = np.array([label for label, _ in rows.values()])
    probs = np.array([p for _, p in rows.values()])
    metrics = bootstrap_intervals(
        lambda i: binary_metrics(labels[i], probs[i]), len(labels), resamples=resamples
    )
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
            f"AUROC {_fmt(auc)}, balanced accuracy {_fmt(bal)}"
        )
    return "\n".join(lines)


def _fmt(entry: dict[str, float | None]) -> str:
    if entry["value"] is None:
        return "n/a"
    if entry["ci_low"] is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gliograde.summarize", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun directory, e.g. logs/train/multiruns/DATE_TIME"
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="patient resamples for the pooled intervals"
    )
    args = parser.parse_args(argv)
    with exit_on_user_error():
        summary = summarize(args.sweep_dir, args.bootstrap)
    print(format_summary(summary))
    print(f"Wrote {args.sweep_dir / 'cv_summary.csv'} and {args.sweep_dir / 'cv_summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A cross-validation sweep's summary (``data.fold`` the only swept key): each fold's
patient-level metrics, their mean and standard deviation, and the folds' out-of-fold
validation predictions pooled into one metric set with intervals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from gliograde.files.atomic import write_files
from gliograde.evaluation.intervals import UNRELIABLE_NOTE, format_interval, patient_intervals
from gliograde.sweeps.table import (
    SummaryError,
    declared_sweep_keys,
    job_dirs,
    job_overrides,
    read_patient_predictions,
    swept_keys,
)

FOLD_KEY = "data.fold"


def _fold(job: Path) -> Any:
    return OmegaConf.select(OmegaConf.load(job / "config.yaml"), FOLD_KEY, default=None)


def is_cross_validation(sweep_dir: str | Path) -> bool:
    """True when the finished jobs differ by ``data.fold`` only, and each names its fold."""
    jobs = job_dirs(Path(sweep_dir))
    swept = swept_keys(job_overrides(jobs), declared_sweep_keys(Path(sweep_dir)))
    return swept in ([FOLD_KEY], []) and all(_fold(j) is not None for j in jobs)


def cv_summary(
    sweep_dir: str | Path, resamples: int = 1000, level: float = 0.95
) -> tuple[dict[str, Any], dict[Path, str]]:
    """``(summary, files)``: the fold summary of ``sweep_dir``'s finished jobs, and the
    contents of cv_summary.csv and cv_summary.json by path (nothing is written)."""
    sweep_dir = Path(sweep_dir)
    jobs = job_dirs(sweep_dir)
    folds = []
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        fold = _fold(job)
        patient = {
            k: v
            for k, v in metrics.items()
            if "/patient_" in k and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        folds.append({"fold": fold if fold is not None else job.name, "run_dir": str(job), **patient})
    names = sorted({k for row in folds for k in row if "/patient_" in k})
    table = np.array([[row.get(name, np.nan) for name in names] for row in folds], dtype=float)
    with np.errstate(all="ignore"):
        mean = dict(zip(names, np.nanmean(table, axis=0).tolist())) if names else {}
        spread = np.nanstd(table, axis=0, ddof=1) if len(folds) > 1 else np.zeros(len(names))
    std = dict(zip(names, spread.tolist()))
    summary: dict[str, Any] = {"n_folds": len(folds), "folds": folds, "mean": mean, "std": std}
    pooled = _pooled_out_of_fold(jobs, resamples, level)
    if pooled is not None:
        summary["pooled_val"] = pooled

    header = ["fold", "run_dir", *names]
    rows = [[row["fold"], row["run_dir"], *(row.get(n, "") for n in names)] for row in folds]
    rows.append(["mean", "", *(mean[n] for n in names)])
    rows.append(["std", "", *(std[n] for n in names)])
    # object cells: each written as str() gives it (a fold number stays 1, not 1.0)
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    files = {
        sweep_dir / "cv_summary.csv": frame.to_csv(index=False, lineterminator="\n"),
        sweep_dir / "cv_summary.json": json.dumps(_json_safe(summary), indent=2) + "\n",
    }
    return summary, files


def summarize(sweep_dir: str | Path, resamples: int = 1000, level: float = 0.95) -> dict[str, Any]:
    """Build, write (cv_summary.csv, cv_summary.json) and return the fold summary of ``sweep_dir``."""
    summary, files = cv_summary(sweep_dir, resamples, level)
    write_files(files)
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

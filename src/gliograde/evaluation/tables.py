"""The prediction tables of an evaluation: written with pandas, read back with the run's splits."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from gliograde.files.atomic import write_frame
from gliograde.data.batches.splits import read_splits_table
from gliograde.evaluation.errors import EvaluationError

if TYPE_CHECKING:
    from gliograde.evaluation.predict import Predictions

SLICE_TABLE = "slice_predictions.csv"
PATIENT_TABLE = "patient_predictions.csv"


def slice_frame(pred: Predictions, plane: str, classes: list[str]) -> pd.DataFrame:
    """One row per slice: patient_id, plane, slice_index, label, prob_<class>..."""
    frame = pd.DataFrame(
        {
            "patient_id": pred.patient_ids,
            "plane": plane,
            "slice_index": pred.slice_index.astype(int),
            "label": [_label(classes, y) for y in pred.labels],
        }
    )
    for k, name in enumerate(classes):
        frame[f"prob_{name}"] = pred.probs[:, k].astype(float)
    return frame


def patient_frame(
    pred: Predictions,
    classes: list[str],
    threshold: float,
    rules: dict[str, str] | None = None,
    tumour_ml: dict[str, float | None] | None = None,
) -> pd.DataFrame:
    """One row per patient: patient_id, label, probability (of the last class), prediction,
    n_slices and score (the log-odds of probability, which ranks patients whose probabilities
    round to the same number: see :mod:`gliograde.models.patient_scores`), and with ``rules`` its
    slice_rule (``mask``, or the mask-free rule it was graded by: see :mod:`gliograde.contract.mask_free`)."""
    positive = pred.patient_probs[:, 1].astype(float)
    frame = pd.DataFrame(
        {
            "patient_id": pred.patients,
            "label": [_label(classes, y) for y in pred.patient_labels],
            "probability": positive,
            "prediction": [classes[int(p >= threshold)] for p in positive],
            "n_slices": pred.slices_per_patient.astype(int),
            "score": pred.patient_scores,
        }
    )
    if rules is not None:
        frame["slice_rule"] = [rules[p] for p in pred.patients]
    if tumour_ml is not None:  # the mask's volume, or the segmenter's prediction (empty: unknown)
        frame["tumour_ml"] = [tumour_ml.get(p) for p in pred.patients]
    return frame


def write_predictions(
    out: Path,
    pred: Predictions,
    plane: str,
    classes: list[str],
    threshold: float,
    rules: dict[str, str] | None = None,
    tumour_ml: dict[str, float | None] | None = None,
) -> pd.DataFrame:
    """``slice_predictions.csv`` and ``patient_predictions.csv`` (with ``rules``, each patient's
    ``slice_rule``) in ``out``; returns the patient table."""
    write_frame(out / SLICE_TABLE, slice_frame(pred, plane, classes))
    patients = patient_frame(pred, classes, threshold, rules, tumour_ml)
    write_frame(out / PATIENT_TABLE, patients)
    return patients


def patient_rows(frame: pd.DataFrame) -> list[dict[str, object]]:
    """The patient table as JSON rows for metrics.json and report.html: without ``score`` (the
    ranking log-odds, in the CSV), undefined values as None and an unknown label left out."""
    shown = frame.drop(columns=["score"], errors="ignore")
    rows = shown.astype(object).where(shown.notna(), None).to_dict("records")
    for row in rows:
        if not row.get("label"):
            row.pop("label", None)
    return rows


def predictions_table(
    run_dir: str | Path, split: str = "test", folder: str | Path | None = None
) -> pd.DataFrame:
    """A run's patient predictions of ``split`` with the run's split of each patient joined.

    Reads ``patient_predictions.csv`` from ``folder`` (default ``RUN/eval/<split>``, evaluate.py's
    folder for its default options) and adds ``split`` from ``RUN/splits.csv`` (empty for patients
    the run never saw, e.g. another cohort's). Labels stay strings; an unknown label is empty.
    """
    run = Path(run_dir)
    table = Path(folder or run / "eval" / split) / PATIENT_TABLE
    if not table.is_file():
        raise EvaluationError(f"{table}: no such file; run python evaluate.py run_dir={run} split={split}")
    frame = pd.read_csv(table, dtype={"patient_id": str, "label": str}, keep_default_na=False)
    splits_csv = run / "splits.csv"
    if not splits_csv.is_file():
        raise EvaluationError(f"{splits_csv}: no such file; {run} is not a complete run directory")
    splits = read_splits_table(splits_csv)[["patient_id", "split"]]
    joined = frame.merge(splits, on="patient_id", how="left", validate="one_to_one")
    joined["split"] = joined["split"].fillna("")
    return joined


def _label(classes: list[str], y: int) -> str:
    return classes[y] if y >= 0 else ""

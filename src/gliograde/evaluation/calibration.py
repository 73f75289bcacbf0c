"""Temperature scaling at the patient level: one temperature ``T`` for the slice logits, fitted on
the run's validation patients so that their patient probabilities (the report's aggregate of
``softmax(logits / T)`` over each patient's slices) have the least negative log-likelihood."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from gliograde.evaluation.errors import EvaluationError
from gliograde.evaluation.intervals import few_per_class
from gliograde.evaluation.metrics import binary_metrics
from gliograde.evaluation.predict import Predictions, from_logits
from gliograde.inference.calibration import CALIBRATION_FILE, file_sha256, write_calibration
from gliograde.files.output_folder import output_errors, writable
from gliograde.models.patient_scores import patient_scores

LOG_T_BOUNDS = (math.log(0.01), math.log(100.0))


def patient_nll(
    logits: np.ndarray,
    slice_patient: np.ndarray,
    patient_labels: np.ndarray,
    method: str,
    weights: np.ndarray | None,
    temperature: float,
) -> float:
    """Mean negative log-likelihood of the patients' labels under temperature ``temperature``;
    ``logits`` is ``[N, V, K]`` (slices, TTA views, classes)."""
    log_probs = patient_scores(slice_patient, logits, method, weights, temperature)["log_probs"]
    return float(-log_probs[np.arange(len(patient_labels)), patient_labels].mean())


def fit_temperature(
    logits: np.ndarray,
    slice_patient: np.ndarray,
    patient_labels: np.ndarray,
    method: str = "mean",
    weights: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """``(T, NLL at T=1, NLL at T)``, minimising the patient NLL over ``log T`` (bounded search)."""
    def nll(log_t: float) -> float:
        return patient_nll(logits, slice_patient, patient_labels, method, weights, math.exp(log_t))

    found = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    before = nll(0.0)
    # The identity stays when the search finds nothing better: calibration never makes val worse.
    if not found.success or found.fun >= before:
        return 1.0, before, before
    return float(math.exp(found.x)), before, float(found.fun)


def with_temperature(pred: Predictions, temperature: float) -> Predictions:
    """``pred`` with slice and patient probabilities recomputed from its logits at ``temperature``."""
    return from_logits(pred, temperature)


def calibrate(checkpoint: Path, val: Predictions, tta: str) -> dict[str, Any]:
    """Fit the temperature on ``val`` (the run's validation patients) and return its record, to be
    stored by :func:`store_calibration` once the evaluation is whole. ``aggregate=vote`` is refused
    earlier, by :func:`gliograde.evaluation.checks.check_options`."""
    if not val.has_labels or not 0 < val.patient_labels.sum() < len(val.patient_labels):
        raise EvaluationError(
            "calibration=temperature needs labelled validation patients of both classes; use calibration=none"
        )
    temperature, before, after = fit_temperature(
        val.logits, val.slice_patient, val.patient_labels, val.method, val.weights
    )
    if not LOG_T_BOUNDS[0] + 1e-3 < math.log(temperature) < LOG_T_BOUNDS[1] - 1e-3:
        print(f"Warning: the fitted temperature {temperature:.3g} sits at the edge of its search range")
    record = {
        "method": "temperature",
        "temperature": temperature,
        "tta": tta,
        "aggregate": val.method,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "val_patients": list(val.patients),
        "unreliable": few_per_class(val.patient_labels),  # fewer than 10 patients of a class
        "nll_before": before,
        "nll_after": after,
        "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(
        f"calibration=temperature: T={temperature:.4f}{'*' if record['unreliable'] else ''} fitted on "
        f"{len(val.patients)} validation patients (patient NLL {before:.4f} -> {after:.4f})"
    )
    return record


def store_calibration(run: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` (sealed) to ``RUN/calibration.json``, where the recipe's temperature is
    read back; return the sealed record."""
    path = run / CALIBRATION_FILE
    with output_errors(path, f"calibration=temperature: {path}", _STORE_ADVICE):
        record = write_calibration(run, record)
    print(f"calibration=temperature: T={record['temperature']:.4f} stored in {path}")
    return record


_STORE_ADVICE = "free space, evaluate a writable copy of the run, or use calibration=none"


def check_storable(run: Path) -> None:
    """Refuse ``calibration=temperature`` before any work when the run cannot be written: the
    temperature is stored in ``RUN/calibration.json``, where predict.py and export find it."""
    if not writable(run):
        raise EvaluationError(
            f"calibration=temperature stores its temperature in {run / CALIBRATION_FILE}, but {run} cannot "
            "be written (read-only?); evaluate a writable copy of the run, or use calibration=none"
        )


def fitted_on_note(record: dict[str, Any], evaluated: list[str]) -> str | None:
    """A warning when evaluated patients (of the run's own cohort) are ones the temperature was
    fitted on, as with ``split=val``: their calibrated metrics flatter the model. None otherwise."""
    fitted = set(record["val_patients"])
    shared = sum(1 for patient in evaluated if patient in fitted)
    if not shared:
        return None
    return (
        f"the temperature was fitted on {shared} of these {len(evaluated)} patients: their calibrated "
        "metrics are optimistic (evaluate split=test for an honest estimate)"
    )


def calibration_scores(before: Predictions, after: Predictions) -> dict[str, Any]:
    """ECE and Brier score of the patient probabilities before and after calibration."""
    raw = binary_metrics(before.patient_labels, before.patient_probs[:, 1])
    cal = binary_metrics(after.patient_labels, after.patient_probs[:, 1])
    return {name: {"before": raw[name], "after": cal[name]} for name in ("ece", "brier")}

"""Patient and slice metrics of one evaluation, with intervals, and its decision threshold."""

from __future__ import annotations

from typing import Any

import numpy as np

from gliograde.evaluation.errors import EvaluationError
from gliograde.evaluation.intervals import (
    UNRELIABLE_NOTE,
    few_per_class,
    interval_entry,
    patient_intervals,
)
from gliograde.evaluation.metrics import binary_metrics, bootstrap_intervals, youden_interval, youden_threshold
from gliograde.evaluation.predict import Predictions, predict
from gliograde.evaluation.progress import progress


def choose_threshold(threshold: str | float, val: Predictions | None) -> tuple[float, list[float] | None]:
    """``(threshold, interval)``: a number as given (no interval), or ``youden`` chosen on the
    validation predictions ``val`` (calibrated ones when calibration is on): the middle of the
    interval ``(low, high]`` of thresholds that maximise Youden's J, with that interval."""
    if str(threshold) != "youden":
        return float(threshold), None
    if val is None:
        raise EvaluationError("threshold=youden is chosen on the val split, which this cohort does not have")
    low, high = youden_interval(val.patient_labels, val.patient_probs[:, 1])
    chosen = youden_threshold(val.patient_labels, val.patient_probs[:, 1])
    calibrated = f" (calibrated, T={val.temperature:.4f})" if val.temperature != 1.0 else ""
    star = "*" if few_per_class(val.patient_labels) else ""
    print(
        f"threshold=youden: {chosen:.3f}{star}, the middle of ({low:.3f}, {high:.3f}], where every threshold "
        f"gives the best sensitivity + specificity on the {len(val.patients)} validation patients{calibrated}"
    )
    if star:
        print(UNRELIABLE_NOTE)
    return chosen, [low, high]


def validation_predictions(
    model, datamodule, aggregate: str, device, show_progress: bool = True, tta: str = "none"
) -> Predictions:
    """The predictions on ``datamodule``'s val patients (for a Youden threshold or a temperature)."""
    if "val" not in datamodule.datasets:
        raise EvaluationError(
            "threshold=youden and calibration=temperature are chosen on the val split, which this cohort "
            "does not have"
        )
    return predict(model, datamodule, "val", aggregate, device, show_progress, tta)


def score(
    pred: Predictions,
    threshold: float,
    classes: list[str],
    level: float,
    resamples: int,
    seed: int,
    show_progress: bool = True,
) -> dict[str, Any]:
    """The metrics section of metrics.json: patient and slice metrics with ``level`` intervals."""
    labels = pred.patient_labels
    # Both interval computations call their metric function once per resample, plus the point value.
    with progress(desc="intervals", total=2 * (resamples + 1), enabled=show_progress) as bar:
        patient = patient_intervals(
            labels,
            pred.patient_probs[:, 1],
            threshold,
            level=level,
            resamples=resamples,
            seed=seed,
            on_resample=bar.update,
            scores=pred.patient_scores,
        )
        # Slice metrics resample patients too: slices of one patient are not independent.
        members = [np.flatnonzero(pred.slice_patient == i) for i in range(len(labels))]
        slice_scores = pred.slice_scores

        def slice_metrics(idx: np.ndarray) -> dict[str, float]:
            bar.update()
            rows = np.concatenate([members[i] for i in idx])
            return binary_metrics(pred.labels[rows], pred.probs[rows, 1], threshold, slice_scores[rows])

        # the whole cohort is resampled, as for the patient bootstrap: the class mix varies
        slices = bootstrap_intervals(slice_metrics, len(labels), resamples=resamples, level=level, seed=seed)
    counts = np.bincount(labels, minlength=2)
    # Slices of one patient are not independent: the patients are what the interval rests on.
    slices = {
        name: interval_entry(
            e["value"], e["ci_low"], e["ci_high"], "bootstrap-patients", int(counts.min()), resamples
        )
        for name, e in slices.items()
    }
    majority = int(np.argmax(counts))
    baseline = binary_metrics(labels, np.full(len(labels), float(majority)), 0.5)
    return {
        "patient": patient,
        "slice": slices,
        "class_counts": {name: int(n) for name, n in zip(classes, counts)},
        "majority_baseline": {
            "class": majority,
            "accuracy": baseline["accuracy"],
            "balanced_accuracy": 0.5,
        },
        "ci_level": level,
        "bootstrap_resamples": resamples,
    }

"""Slice probabilities to one probability per patient (see :mod:`gliograde.patient_scores`)."""

from __future__ import annotations

import numpy as np

from gliograde.patient_scores import AGGREGATES, patient_log_probs

__all__ = ["AGGREGATES", "aggregate"]


def aggregate(
    patient: np.ndarray, probs: np.ndarray, method: str = "mean", weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patients [P], probabilities [P, K], slices per patient [P]), patients ascending: the
    patient aggregate of slice probabilities, as :func:`gliograde.patient_scores.patient_log_probs`
    computes it from log-probabilities. Where logits are at hand, use
    :func:`gliograde.patient_scores.patient_scores` instead, which never rounds them to 0 or 1."""
    with np.errstate(divide="ignore"):
        log_probs = np.log(np.asarray(probs, dtype=np.float64))
    patients, aggregated, counts = patient_log_probs(patient, log_probs, method, weights)
    return patients, np.exp(aggregated), counts

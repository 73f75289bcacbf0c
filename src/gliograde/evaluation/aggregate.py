"""Slice probabilities to one probability per patient."""

from __future__ import annotations

import numpy as np
from gliograde.errors import ConfigError

AGGREGATES = ("mean", "vote", "tumor_weighted")


def aggregate(
    patient: np.ndarray, probs: np.ndarray, method: str = "mean", weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patients [P], probabilities [P, K], slices per patient [P]), patients ascending.

    ``mean`` averages slice probabilities (soft voting); ``vote`` gives each class the share
    of slices whose most likely class it is (hard majority); ``tumor_weighted`` averages with
    ``weights`` (tumour voxels in the slice), falling back to the mean for a patient whose
    slices carry no weight.
    """
    if method not in AGGREGATES:
        raise ConfigError(f"aggregate={method!r} must be one of {list(AGGREGATES)}")
    patients, inverse, counts = np.unique(patient, return_inverse=True, return_counts=True)
    if method == "vote":
        values = np.eye(probs.shape[1])[probs.argmax(axis=1)]
        w = np.ones(len(probs))
    else:
        values = probs
        w = np.ones(len(probs)) if method == "mean" else np.asarray(weights, dtype=float)
        if method == "tumor_weighted":
            totals = np.bincount(inverse, weights=w, minlength=len(patients))
            w = np.where(totals[inverse] > 0, w, 1.0)  # no tumour seen: plain mean
    sums = np.zeros((len(patients), probs.shape[1]))
    np.add.at(sums, inverse, values * w[:, None])
    totals = np.bincount(inverse, weights=w, minlength=len(patients))
    return patients, sums / totals[:, None], counts

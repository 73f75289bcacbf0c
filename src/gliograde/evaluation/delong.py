"""DeLong's nonparametric AUROC variance, for one ranking or several on the same patients.

DeLong, DeLong and Clarke-Pearson (1988), *Biometrics* 44:837-845. Each positive's
placement ``V10`` is the fraction of negatives it outranks (ties count one half) and each
negative's ``V01`` the fraction of positives that outrank it; the AUROC is their mean, and the
covariance of several AUROCs is ``S10 / m + S01 / n`` with ``S10``, ``S01`` the sample
covariances of the placements over the ``m`` positives and ``n`` negatives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm


def placements(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(V10, V01)``: per positive, per negative, the structural components of the AUROC."""
    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    pos, neg = scores[labels == 1], scores[labels == 0]
    # a patient cohort has hundreds of patients at most: the m x n kernel is small and plain
    kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return kernel.mean(axis=1), kernel.mean(axis=0)


def delong_covariance(labels: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of each score vector and their DeLong covariance matrix.

    Needs both classes; the covariance is NaN when a class has fewer than two patients
    (a sample variance needs two).
    """
    labels = np.asarray(labels, dtype=int)
    m, n = int((labels == 1).sum()), int((labels == 0).sum())
    if m == 0 or n == 0:
        k = len(scores)
        return np.full(k, np.nan), np.full((k, k), np.nan)
    parts = [placements(labels, s) for s in scores]
    v10 = np.array([p[0] for p in parts])
    v01 = np.array([p[1] for p in parts])
    aucs = v10.mean(axis=1)
    if m < 2 or n < 2:
        return aucs, np.full((len(scores), len(scores)), np.nan)
    cov = np.atleast_2d(np.cov(v10, ddof=1)) / m + np.atleast_2d(np.cov(v01, ddof=1)) / n
    return aucs, cov


def delong_test(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, level: float = 0.95
) -> dict[str, Any]:
    """DeLong's test of AUROC(A) = AUROC(B) for two rankings of the same patients.

    Returns ``auroc_a``, ``auroc_b``, ``difference`` (A - B), its Wald interval
    ``ci_low``/``ci_high``, ``z`` and the two-sided ``p_value``; the interval and test are
    None when the variance of the difference is zero or undefined, with the reason in ``note``.
    """
    aucs, cov = delong_covariance(labels, scores_a, scores_b)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    result: dict[str, Any] = {
        "auroc_a": _plain(aucs[0]),
        "auroc_b": _plain(aucs[1]),
        "difference": _plain(diff),
        "ci_low": None,
        "ci_high": None,
        "z": None,
        "p_value": None,
        "method": "DeLong",
    }
    if not np.isfinite(var):
        result["note"] = "needs at least two patients of each class"
    elif var <= 0:
        result["note"] = (
            "DeLong's variance of the difference is zero (e.g. both rankings separate the classes)"
        )
    else:
        half = norm.ppf(0.5 + level / 2) * np.sqrt(var)
        z = diff / np.sqrt(var)
        result.update(
            ci_low=max(-1.0, diff - half),
            ci_high=min(1.0, diff + half),
            z=float(z),
            p_value=float(2 * norm.sf(abs(z))),
        )
    return result


def _plain(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)

"""Paired comparison of two classifiers' calls on the same patients.

- Accuracy: the exact McNemar test (a binomial test on the discordant patients) and
  Newcombe's interval for a difference of paired proportions (``newcombe-paired``; Newcombe
  1998, *Stat Med* 17:2635, method 10: Wilson intervals combined with the phi correlation).
- Balanced accuracy: the same interval per class (sensitivity on the positives, specificity on
  the negatives), combined by MOVER into one for the mean of the two differences, and an exact
  stratified McNemar test: under "A and B are exchangeable" each discordant patient's sign is
  a fair coin, so the null distribution of the balanced-accuracy difference is enumerated
  exactly (it reduces to the exact McNemar test when the weights are equal).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binom

from gliograde.evaluation.intervals import mean_of_two_interval, wilson_interval


def paired_difference_interval(
    correct_a: np.ndarray, correct_b: np.ndarray, level: float = 0.95
) -> tuple[float, float, float]:
    """``(difference, low, high)`` of accuracy(A) - accuracy(B), Newcombe's method 10."""
    a_ok, b_ok = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    n = len(a_ok)
    if n == 0:
        return np.nan, np.nan, np.nan
    both = int((a_ok & b_ok).sum())
    only_a = int((a_ok & ~b_ok).sum())
    only_b = int((~a_ok & b_ok).sum())
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, level)
    l2, u2 = wilson_interval(both + only_b, n, level)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    # Newcombe's phi: a positive cross-product difference is shrunk by n/2 (to zero at most),
    # which keeps the interval from being too narrow when A and B agree often by chance.
    cross = both * neither - only_a * only_b
    cross = max(0.0, cross - n / 2) if cross > 0 else cross
    phi = cross / np.sqrt(margins) if margins > 0 else 0.0
    d = p1 - p2
    low = d - np.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + np.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return float(d), float(max(-1.0, low)), float(min(1.0, high))


def exact_paired_pvalue(correct_a: np.ndarray, correct_b: np.ndarray, weights: np.ndarray) -> float:
    """Two-sided exact p-value of ``sum(weights * (correct_a - correct_b))`` under exchangeability.

    Patients with the same weight form one stratum; within a stratum the number of discordant
    patients that favour A is Binomial(discordant, 1/2).
    """
    a_ok, b_ok = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    weights = np.asarray(weights, dtype=float)
    observed = float(np.sum(weights * (a_ok.astype(float) - b_ok.astype(float))))
    values, probs = np.zeros(1), np.ones(1)
    for w in np.unique(weights):
        discordant = int(((a_ok != b_ok) & (weights == w)).sum())
        if discordant == 0:
            continue
        k = np.arange(discordant + 1)
        values = np.add.outer(values, w * (2 * k - discordant)).ravel()
        probs = np.multiply.outer(probs, binom.pmf(k, discordant, 0.5)).ravel()
    tolerance = 1e-9 * max(1.0, abs(observed))
    return float(min(1.0, probs[np.abs(values) >= abs(observed) - tolerance].sum()))


def compare_calls(
    labels: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray, level: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Accuracy and balanced accuracy of A and B, their paired difference, interval and p-value."""
    labels = np.asarray(labels, dtype=int)
    a_ok = np.asarray(predicted_a, dtype=int) == labels
    b_ok = np.asarray(predicted_b, dtype=int) == labels
    n = len(labels)
    diff, low, high = paired_difference_interval(a_ok, b_ok, level)
    result = {
        "accuracy": {
            "a": float(a_ok.mean()) if n else None,
            "b": float(b_ok.mean()) if n else None,
            "difference": _plain(diff),
            "ci_low": _plain(low),
            "ci_high": _plain(high),
            "p_value": exact_paired_pvalue(a_ok, b_ok, np.full(n, 1.0 / max(n, 1))) if n else None,
            "method": "exact McNemar; newcombe-paired interval",
            "discordant": {
                "a_right_b_wrong": int((a_ok & ~b_ok).sum()),
                "a_wrong_b_right": int((~a_ok & b_ok).sum()),
            },
        }
    }
    pos, neg = labels == 1, labels == 0
    entry: dict[str, Any] = {"a": None, "b": None, "difference": None, "ci_low": None, "ci_high": None}
    entry.update(p_value=None, method="exact stratified McNemar; MOVER of newcombe-paired per class")
    if pos.any() and neg.any():
        ds, ls, hs = paired_difference_interval(a_ok[pos], b_ok[pos], level)
        dn, ln, hn = paired_difference_interval(a_ok[neg], b_ok[neg], level)
        low, high = mean_of_two_interval(ds, (ls, hs), dn, (ln, hn))
        weights = np.where(pos, 0.5 / pos.sum(), 0.5 / neg.sum())
        entry.update(
            a=float((a_ok[pos].mean() + a_ok[neg].mean()) / 2),
            b=float((b_ok[pos].mean() + b_ok[neg].mean()) / 2),
            difference=float((ds + dn) / 2),
            ci_low=max(-1.0, low),
            ci_high=min(1.0, high),
            p_value=exact_paired_pvalue(a_ok, b_ok, weights),
        )
    result["balanced_accuracy"] = entry
    return result


def _plain(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)

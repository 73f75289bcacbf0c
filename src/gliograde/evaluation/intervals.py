"""Patient-level confidence intervals that stay honest on small cohorts.

A percentile bootstrap cannot leave the observed range, so 5 of 5 patients right reads as
``1.000 [1.000, 1.000]``. Here each metric gets an interval whose coverage holds at the
boundary:

- accuracy, sensitivity, specificity, PPV, NPV: Wilson score interval of the proportion
  (``wilson``; Wilson 1927, Newcombe 1998).
- balanced accuracy: MOVER-Wilson (``mover-wilson``; Zou & Donner 2008): the Wilson intervals
  of sensitivity and specificity, two independent proportions, recovered into an interval for
  their mean.
- AUROC: DeLong's variance (``delong``; DeLong et al. 1988), a Wald interval clipped to [0, 1];
  when that variance is zero (the classes are perfectly separated, or every score ties) the
  Wald interval would have no width, so Newcombe's score interval with the Hanley-McNeil
  variance is used instead (``newcombe-score``; Newcombe 2006, method 5).
- F1, MCC, AUPRC, Brier score, ECE: a percentile bootstrap of patients (``bootstrap``),
  resampled from the whole cohort, so that the class mix varies as it would in another sample
  (resamples that leave a metric undefined, e.g. one without a class, are left out of its
  interval). Resampling within each class would hold the mix fixed, and these metrics of a
  classifier that calls every patient the same depend on nothing else: every resample would
  give the same Brier score, F1 and MCC.

An interval is never a point: where a method gives no width (every bootstrap resample gives the
same value, as for a classifier that calls every patient the same), or no bounds at all, the
bounds are None and ``ci_note`` says why (``not estimable: ...``). Every entry carries
``unreliable: true`` when a class it depends on has fewer than :data:`MIN_PER_CLASS` patients
(sensitivity: the positives; specificity: the negatives; the rest: the smaller class), and only
then: that is what the ``*`` of :data:`UNRELIABLE_NOTE` says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.stats import binomtest, norm

from gliograde.evaluation.delong import delong_covariance
from gliograde.evaluation.metrics import (
    METRICS,
    binary_metrics,
    bootstrap_intervals,
    resample_metrics,
    resample_metrics_many,
)

MIN_PER_CLASS = 10
PROPORTIONS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``successes / trials`` (NaN, NaN when there are no trials)."""
    if trials <= 0:
        return np.nan, np.nan
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def mean_of_two_interval(
    p1: float, ci1: tuple[float, float], p2: float, ci2: tuple[float, float]
) -> tuple[float, float]:
    """MOVER interval of ``(p1 + p2) / 2`` for two independent estimates with intervals."""
    centre = (p1 + p2) / 2
    low = centre - np.hypot(p1 - ci1[0], p2 - ci2[0]) / 2
    high = centre + np.hypot(ci1[1] - p1, ci2[1] - p2) / 2
    return float(low), float(high)


def auroc_interval(labels: np.ndarray, scores: np.ndarray, level: float = 0.95) -> tuple[float, float, str]:
    """``(low, high, method)`` for the AUROC: DeLong, or Newcombe's score interval when
    DeLong's variance is zero. NaN bounds when a class has no patient."""
    labels = np.asarray(labels, dtype=int)
    m, n = int((labels == 1).sum()), int((labels == 0).sum())
    aucs, cov = delong_covariance(labels, scores)
    auc, var = float(aucs[0]), float(cov[0, 0])
    if not np.isfinite(auc):
        return np.nan, np.nan, "delong"
    if np.isfinite(var) and var > 0:
        half = norm.ppf(0.5 + level / 2) * np.sqrt(var)
        return max(0.0, auc - half), min(1.0, auc + half), "delong"
    low, high = newcombe_auroc_interval(auc, m, n, level)
    return low, high, "newcombe-score"


def newcombe_auroc_interval(auc: float, m: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Newcombe (2006) method 5: the AUROCs ``t`` with ``(auc - t)^2 <= z^2 var(t)``, where
    ``var(t)`` is Hanley and McNeil's variance with both class sizes replaced by their mean."""
    z2 = norm.ppf(0.5 + level / 2) ** 2
    half_total = (m + n) / 2

    def outside(t: float) -> float:  # > 0 outside the interval
        var = t * (1 - t) / (m * n) * (1 + (half_total - 1) * ((1 - t) / (2 - t) + t / (1 + t)))
        return (auc - t) ** 2 - z2 * var

    grid = np.linspace(0.0, 1.0, 2001)
    out = np.array([outside(t) for t in grid]) > 0
    below = np.flatnonzero(out & (grid < auc))
    above = np.flatnonzero(out & (grid > auc))
    low = brentq(outside, grid[below[-1]], min(grid[below[-1] + 1], auc)) if len(below) else 0.0
    high = brentq(outside, max(grid[above[0] - 1], auc), grid[above[0]]) if len(above) else 1.0
    return float(low), float(high)


def patient_intervals(
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float = 0.5,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    on_resample: Callable[[], object] | None = None,
    scores: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """``{metric: {value, ci_low, ci_high, ci_method, unreliable[, ci_note]}}`` for every metric
    in METRICS.

    ``labels`` in {0, 1} and positive-class ``probs``, one per patient; ``scores`` (the
    patients' log-odds, :func:`gliograde.models.patient_scores.positive_score`) are what AUROC and
    AUPRC rank when given. Undefined values (and their intervals) are None, so the result is
    valid JSON as it is; an interval that cannot be estimated has None bounds and a ``ci_note``.
    ``on_resample`` is called once per bootstrap resample (to show progress).
    """
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    ranking = probs if scores is None else np.asarray(scores, dtype=float)
    point = binary_metrics(labels, probs, threshold, scores)
    called = probs >= threshold
    tp = int((called & (labels == 1)).sum())
    fn = int((~called & (labels == 1)).sum())
    tn = int((~called & (labels == 0)).sum())
    fp = int((called & (labels == 0)).sum())
    counts = {
        "accuracy": (tp + tn, len(labels)),
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
    }
    def resampled(i: np.ndarray) -> dict[str, float]:
        if on_resample is not None:
            on_resample()
        return resample_metrics(labels[i], probs[i], threshold, None if scores is None else ranking[i])

    def resampled_many(draws: np.ndarray) -> dict[str, np.ndarray]:
        for _ in range(len(draws) if on_resample is not None else 0):
            on_resample()
        return resample_metrics_many(labels, probs, draws, threshold, None if scores is None else ranking)

    boot = bootstrap_intervals(
        resampled,
        len(labels),
        resamples=resamples,
        level=level,
        seed=seed,
        compute_many=resampled_many,
    )
    n_pos, n_neg = tp + fn, tn + fp
    result = {}
    for name in METRICS:
        value = point[name]
        if name in PROPORTIONS:
            (low, high), method = wilson_interval(*counts[name], level), "wilson"
        elif name == "balanced_accuracy":
            sens, spec = point["sensitivity"], point["specificity"]
            low, high = mean_of_two_interval(
                sens, wilson_interval(tp, n_pos, level), spec, wilson_interval(tn, n_neg, level)
            )
            method = "mover-wilson"
        elif name == "auroc":
            low, high, method = auroc_interval(labels, ranking, level)
        else:
            low, high, method = boot[name]["ci_low"], boot[name]["ci_high"], "bootstrap"
        smallest = {"sensitivity": n_pos, "specificity": n_neg}.get(name, min(n_pos, n_neg))
        result[name] = interval_entry(value, low, high, method, smallest, resamples)
    return result


def interval_entry(
    value: float | None,
    low: float | None,
    high: float | None,
    method: str,
    smallest_class: int,
    resamples: int | None = None,
) -> dict[str, Any]:
    """One metric's ``{value, ci_low, ci_high, ci_method, unreliable[, ci_note]}``.

    A zero-width interval is not an interval: its bounds become None with ``ci_note`` saying
    that it is not estimable, as do missing bounds of a defined value. ``unreliable`` is
    ``smallest_class < MIN_PER_CLASS`` (the patients of the class the metric depends on).
    """
    value, low, high = _finite(value), _finite(low), _finite(high)
    entry: dict[str, Any] = {"value": value, "ci_low": None, "ci_high": None, "ci_method": method}
    bootstrap = method.startswith("bootstrap")
    if value is None:
        pass
    elif low is None or high is None:
        if bootstrap and not resamples:
            entry["ci_note"] = "not computed: no bootstrap resamples were asked for"
        elif bootstrap:
            entry["ci_note"] = "not estimable: no bootstrap resample defines this metric"
        else:
            entry["ci_note"] = f"not estimable: the {method} interval is undefined here"
    elif np.isclose(low, high, rtol=1e-9, atol=1e-12):
        entry["ci_note"] = (
            "not estimable: every bootstrap resample gives the same value" if bootstrap
            else f"not estimable: the {method} interval has no width here"
        )
    else:
        entry["ci_low"], entry["ci_high"] = low, high
    entry["unreliable"] = bool(smallest_class < MIN_PER_CLASS)
    return entry


def few_per_class(labels: np.ndarray) -> bool:
    """Whether a class among ``labels`` (in {0, 1}) has fewer than :data:`MIN_PER_CLASS`
    patients: a threshold or temperature fitted on them carries the ``*`` of an interval."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=2)
    return bool(counts.min() < MIN_PER_CLASS)


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def format_interval(entry: dict[str, Any], digits: int = 3) -> str:
    """``0.800 [0.490, 0.943]`` or ``0.667 [not estimable]``, with ``*`` appended when the
    interval is flagged unreliable."""
    if entry.get("value") is None:
        return "n/a"
    text = f"{entry['value']:.{digits}f}"
    if entry.get("ci_low") is not None:
        text += " " + bounds_text(entry["ci_low"], entry["ci_high"], digits)
    elif entry.get("ci_note"):
        text += f" [{entry['ci_note'].split(':')[0]}]"
    return text + ("*" if entry.get("unreliable") else "")


def bounds_text(low: float, high: float, digits: int = 3) -> str:
    """``[low, high]`` with ``digits`` decimals, or as many more as it takes for the two bounds
    of an interval with width to read differently (``[0.0001, 0.0004]``, never ``[0.000, 0.000]``)."""
    for places in range(digits, 16):
        text_low, text_high = f"{low:.{places}f}", f"{high:.{places}f}"
        if text_low != text_high:
            break
    return f"[{text_low}, {text_high}]"


UNRELIABLE_NOTE = (
    f"* fewer than {MIN_PER_CLASS} patients in a class: the interval (or the threshold or temperature "
    "fitted on them) is unreliable"
)

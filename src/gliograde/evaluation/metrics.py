"""Binary classification metrics with patient-bootstrap confidence intervals (scikit-learn)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sklearn
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

from gliograde.errors import ConfigError

METRICS = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "mcc",
    "auroc",
    "auprc",
    "brier",
    "ece",
)


def binary_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5, scores: np.ndarray | None = None
) -> dict[str, float]:
    """Every metric in METRICS for labels in {0, 1} and positive-class probabilities.

    AUROC and AUPRC rank ``scores`` when given (the log-odds of
    :func:`gliograde.models.patient_scores.positive_score`, which keep apart probabilities that round
    to the same float), else ``probs``; calls (``probs >= threshold``), the Brier score and ECE
    use ``probs``.

    Metrics that a sample cannot define (AUROC with one class, PPV with no positive call)
    are NaN rather than a misleading 0. The threshold metrics all derive from one confusion
    matrix (scikit-learn's), because the bootstrap evaluates them thousands of times and one
    call per metric costs ten times as much; a test holds them equal to scikit-learn's own
    functions. Ranking metrics come from scikit-learn; ECE is torchmetrics' (10 bins, L1), computed
    in NumPy by :func:`expected_calibration_error` so that no command that only scores tables
    imports torch.
    """
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    ranking = probs if scores is None else np.asarray(scores, dtype=float)
    if len(labels) == 0:
        return {name: np.nan for name in METRICS}
    predicted = (probs >= threshold).astype(int)
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        tn, fp, fn, tp = (float(v) for v in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
        both = 0 < labels.sum() < len(labels)
        auroc = roc_auc_score(labels, ranking) if both else np.nan
        auprc = average_precision_score(labels, ranking) if both else np.nan
        brier = brier_score_loss(labels, probs, pos_label=1)
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    mcc_den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "accuracy": (tp + tn) / len(labels),
        "balanced_accuracy": (sensitivity + specificity) / 2 if both else np.nan,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "mcc": (tp * tn - fp * fn) / mcc_den if mcc_den > 0 else (0.0 if both else np.nan),
        "auroc": float(auroc),
        "auprc": float(auprc),
        "brier": float(brier),
        "ece": expected_calibration_error(labels, probs),
    }


BOOTSTRAPPED = ("f1", "mcc", "auprc", "brier", "ece")
_CHUNK = 250  # resamples scored together by resample_metrics_many: a few MB for 1000 patients
"""The metrics :func:`gliograde.evaluation.intervals.patient_intervals` bootstraps."""

# torchmetrics' 10 bin edges to the bit: torch.linspace counts the upper half down from the end
_ECE_EDGES = np.array([0.1 * i if i < 5 else 1.0 - 0.1 * (10 - i) for i in range(11)])


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray) -> float:
    """torchmetrics' ``binary_calibration_error(n_bins=10, norm="l1")`` of positive-class
    probabilities: per bin, |share of positives - mean probability|, weighted by the bin's size."""
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    bins = np.searchsorted(_ECE_EDGES, probs, side="right") - 1
    count = np.bincount(bins, minlength=len(_ECE_EDGES)).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.nan_to_num(np.bincount(bins, probs, len(_ECE_EDGES)) / count)
        acc = np.nan_to_num(np.bincount(bins, (labels == 1).astype(float), len(_ECE_EDGES)) / count)
    return float(np.sum(np.abs(acc - conf) * (count / len(labels))))


def resample_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5, scores: np.ndarray | None = None
) -> dict[str, float]:
    """F1, MCC, AUPRC, Brier score and ECE as :func:`binary_metrics` gives them, in NumPy alone
    (AUPRC ranks ``scores`` when given, as there).

    A bootstrap evaluates these once per resample: scikit-learn's argument checks made each
    call cost about 20 ms, thousands of times per split (a test holds the two functions equal).
    """
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    ranking = probs if scores is None else np.asarray(scores, dtype=float)
    n = len(labels)
    if n == 0:
        return {name: np.nan for name in BOOTSTRAPPED}
    positive = labels == 1
    called = probs >= threshold
    tp = float(np.count_nonzero(called & positive))
    fp = float(np.count_nonzero(called & ~positive))
    fn = float(np.count_nonzero(~called & positive))
    tn = float(n - tp - fp - fn)
    n_pos = tp + fn
    both = 0 < n_pos < n
    mcc_den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    if both:
        # average precision: sum over distinct thresholds (descending) of recall gain x precision
        order = np.argsort(-ranking, kind="mergesort")
        ranked, hits = ranking[order], positive[order].astype(float)
        ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # last index of each tied score
        tps = np.cumsum(hits)[ends]
        precision = tps / (ends + 1)
        auprc = float(np.sum(np.diff(np.r_[0.0, tps]) / n_pos * precision))
    else:
        auprc = np.nan
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "mcc": (tp * tn - fp * fn) / mcc_den if mcc_den > 0 else (0.0 if both else np.nan),
        "auprc": auprc,
        "brier": float(np.mean((probs - labels) ** 2)),
        "ece": expected_calibration_error(labels, probs),
    }


def resample_metrics_many(
    labels: np.ndarray,
    probs: np.ndarray,
    draws: np.ndarray,
    threshold: float = 0.5,
    scores: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """:func:`resample_metrics` of every row of ``draws`` (``[resamples, n]`` patient indices)
    at once: ``{metric: [resamples]}``, NaN where a resample leaves a metric undefined. One
    call per resample cost a bootstrap of a split 0.1 s; a sweep's summary scores dozens."""
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    ranking = probs if scores is None else np.asarray(scores, dtype=float)
    draws = np.asarray(draws, dtype=np.int64).reshape(len(draws), -1)
    resamples, n = draws.shape
    if n == 0:
        return {name: np.full(resamples, np.nan) for name in BOOTSTRAPPED}
    positive = (labels == 1)[draws]
    called = (probs >= threshold)[draws]
    tp = np.count_nonzero(called & positive, axis=1).astype(float)
    fp = np.count_nonzero(called & ~positive, axis=1).astype(float)
    fn = np.count_nonzero(~called & positive, axis=1).astype(float)
    tn = n - tp - fp - fn
    n_pos = tp + fn
    both = (n_pos > 0) & (n_pos < n)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * tp / (2 * tp + fp + fn)
        mcc_den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        undefined_mcc = np.where(both, 0.0, np.nan)
        mcc = np.where(mcc_den > 0, (tp * tn - fp * fn) / np.where(mcc_den > 0, mcc_den, 1), undefined_mcc)
        # average precision: each positive scores the precision at the end of its tie group
        order = np.argsort(-ranking[draws], axis=1, kind="mergesort")
        ranked = np.take_along_axis(ranking[draws], order, axis=1)
        hits = np.take_along_axis(positive, order, axis=1)
        ends = np.concatenate([ranked[:, 1:] != ranked[:, :-1], np.ones((resamples, 1), bool)], axis=1)
        position = np.broadcast_to(np.arange(n), (resamples, n))
        group_end = np.minimum.accumulate(np.where(ends, position, n)[:, ::-1], axis=1)[:, ::-1]
        precision = np.take_along_axis(np.cumsum(hits, axis=1), group_end, axis=1) / (group_end + 1)
        auprc = np.where(both, np.sum(hits * precision, axis=1) / n_pos, np.nan)
    sample_probs = probs[draws]
    brier = np.mean((sample_probs - labels[draws]) ** 2, axis=1)
    # ECE as expected_calibration_error, every resample's bins counted in one bincount
    edges = len(_ECE_EDGES)
    patient_bins = np.searchsorted(_ECE_EDGES, probs, side="right") - 1
    bins = patient_bins[draws] + edges * np.arange(resamples)[:, None]  # one block of bins per resample

    def per_bin(weights: np.ndarray | None) -> np.ndarray:
        summed = np.bincount(bins.ravel(), None if weights is None else weights.ravel(), resamples * edges)
        return summed.reshape(resamples, edges).astype(float)

    count = per_bin(None)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.nan_to_num(per_bin(sample_probs) / count)
        acc = np.nan_to_num(per_bin(positive.astype(float)) / count)
    ece = np.sum(np.abs(acc - conf) * (count / n), axis=1)
    return {"f1": f1, "mcc": mcc, "auprc": auprc, "brier": brier, "ece": ece}


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else np.nan


def bootstrap_intervals(
    compute: Callable[[np.ndarray], dict[str, float]],
    n_patients: int,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    compute_many: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
) -> dict[str, dict[str, float]]:
    """``{metric: {value, ci_low, ci_high}}`` by resampling patients with replacement.

    ``compute(indices)`` returns the metrics for the patients at ``indices`` (a resample may
    repeat patients); the point value uses every patient once. ``compute_many``, if given, does
    the same for a ``[resamples, n]`` array of indices at once and is used for the resamples.
    Resamples where a metric is
    undefined are left out of that metric's interval. A percentile interval cannot leave the
    observed range: on small cohorts prefer :func:`gliograde.evaluation.intervals.patient_intervals`.
    """
    point = compute(np.arange(n_patients))
    rng = np.random.default_rng(seed)
    draws = {name: [] for name in point}
    if compute_many is not None and n_patients:
        for start in range(0, resamples, _CHUNK):  # the same draws as one at a time
            many = compute_many(rng.integers(0, n_patients, (min(_CHUNK, resamples - start), n_patients)))
            for name, values in many.items():
                draws[name].extend(values[np.isfinite(values)].tolist())
        resamples = 0
    for _ in range(resamples):
        if n_patients == 0:
            break
        values = compute(rng.integers(0, n_patients, n_patients))
        for name, value in values.items():
            if np.isfinite(value):
                draws[name].append(value)
    tail = (1 - level) / 2 * 100
    result = {}
    for name, value in point.items():
        samples = np.asarray(draws[name])
        low, high = np.percentile(samples, [tail, 100 - tail]) if len(samples) else (np.nan, np.nan)
        result[name] = {"value": _plain(value), "ci_low": _plain(low), "ci_high": _plain(high)}
    return result


def _plain(value: float) -> float | None:
    """JSON has no NaN: undefined values are null."""
    return None if value is None or not np.isfinite(value) else float(value)


def youden_interval(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """``(low, high]``: every threshold in it maximises sensitivity + specificity - 1 (Youden's J).

    Calls are ``prob >= threshold``, so the thresholds between two neighbouring scores all make
    the same calls; among equally good intervals the highest is taken.
    """
    labels = np.asarray(labels, dtype=int)
    if not 0 < labels.sum() < len(labels):
        raise ConfigError("threshold=youden needs both classes among the validation patients")
    fpr, tpr, thresholds = roc_curve(labels, probs, drop_intermediate=False)
    best = int(np.argmax(np.round(tpr - fpr, 12)))  # equal J (2/3 vs 1 - 1/3) must tie
    high = float(min(thresholds[best], 1.0))
    low = float(thresholds[best + 1]) if best + 1 < len(thresholds) else 0.0
    return low, high


def youden_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The middle of :func:`youden_interval`: on saturated probabilities (validation patients at
    0.001 and 0.999) its upper edge would sit at the positive scores themselves."""
    low, high = youden_interval(labels, probs)
    return (low + high) / 2

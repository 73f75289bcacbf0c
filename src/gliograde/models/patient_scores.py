"""Slice logits to patient probabilities and ranking scores: the one way every command computes them.

Training, evaluate.py, predict.py (checkpoint or ONNX logits) and compare all call these
functions, so the same patients get the same numbers everywhere. Everything is float64 and
stays in log space: a slice's class log-probabilities are ``log_softmax(logits / T)``, a
patient's are the log of the aggregate (by default the mean) of its slices' probabilities,
computed by log-sum-exp. Probabilities near 0 or 1 therefore keep their order, where float32
softmax rounds every confident slice to exactly 1.0 and ties patients that the model ranks.

The positive-class score that AUROC, AUPRC and DeLong rank is the patient's log-odds,
``log p1 - log p0``: a monotone function of its probability ``p1`` that does not saturate.
Imports only NumPy: the config schema (through :data:`AGGREGATES`) and ONNX inference import it.
"""

from __future__ import annotations

import numpy as np

from gliograde.errors import ConfigError

AGGREGATES = ("mean", "vote", "tumor_weighted")
# A certain call's score (+-inf): finite, and far enough from the float limit that differences of
# two scores (as scikit-learn's ROC takes them) do not overflow.
_LARGEST = 1e300


def slice_log_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class log-probabilities ``[N, K]`` (float64) of logits ``[N, K]``, or ``[N, V, K]`` for
    ``V`` test-time views: then the log of the views' mean of ``softmax(logits / temperature)``."""
    x = np.asarray(logits, dtype=np.float64)
    if temperature != 1.0:
        x = x / float(temperature)
    log_probs = x - logsumexp(x, axis=-1, keepdims=True)
    if log_probs.ndim == 3:
        log_probs = logsumexp(log_probs, axis=1) - np.log(log_probs.shape[1])
    return log_probs


def patient_log_probs(
    patient: np.ndarray, log_probs: np.ndarray, method: str = "mean", weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(patients [P], log-probabilities [P, K], slices per patient [P])``, patients ascending.

    ``mean`` averages slice probabilities (soft voting); ``vote`` gives each class the share of
    slices whose most likely class it is (hard majority); ``tumor_weighted`` averages with
    ``weights`` (tumour voxels in the slice), falling back to the mean for a patient whose
    slices carry no weight.
    """
    if method not in AGGREGATES:
        raise ConfigError(f"aggregate={method!r} must be one of {list(AGGREGATES)}")
    log_probs = np.asarray(log_probs, dtype=np.float64)
    patients, inverse, counts = np.unique(np.asarray(patient), return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    w = np.ones(len(log_probs))
    with np.errstate(divide="ignore"):
        if method == "vote":
            votes = np.eye(log_probs.shape[1])[log_probs.argmax(axis=1)]
            log_probs = np.log(votes)
        elif method == "tumor_weighted":
            w = np.asarray(weights, dtype=np.float64)
            totals = np.bincount(inverse, weights=w, minlength=len(patients))
            w = np.where(totals[inverse] > 0, w, 1.0)  # no tumour seen: plain mean
        totals = np.bincount(inverse, weights=w, minlength=len(patients))
        terms = log_probs + np.log(w)[:, None]
        aggregated = _group_logsumexp(terms, inverse, len(patients)) - np.log(totals)[:, None]
    return patients, aggregated, counts


def logsumexp(values: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    """``log(sum(exp(values), axis))`` without overflow or underflow."""
    peak = np.max(values, axis=axis, keepdims=True)
    shift = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(values - shift), axis=axis, keepdims=True)) + shift
    return out if keepdims else np.squeeze(out, axis=axis)


def _group_logsumexp(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group and column, ``log(sum(exp(values)))`` without overflow or underflow."""
    peak = np.full((n_groups, values.shape[1]), -np.inf)
    np.maximum.at(peak, group, values)
    shift = np.where(np.isfinite(peak), peak, 0.0)
    sums = np.zeros_like(peak)
    np.add.at(sums, group, np.exp(values - shift[group]))
    return np.log(sums) + shift


def positive_score(log_probs: np.ndarray) -> np.ndarray:
    """The ranking score of class 1 from two-class log-probabilities ``[N, 2]``: the log-odds
    ``log p1 - log p0`` (a certain vote, ``+-inf``, becomes ``+-1e300``)."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    score = log_probs[:, 1] - log_probs[:, 0]
    return np.clip(score, -_LARGEST, _LARGEST)


def probability_score(probability: np.ndarray | float) -> np.ndarray:
    """The log-odds of class-1 probabilities, for tables written without a ``score`` column: a
    probability that was stored as exactly 0 or 1 can no longer be told apart from its neighbours."""
    p = np.asarray(probability, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.clip(np.log(p) - np.log1p(-p), -_LARGEST, _LARGEST)


def table_scores(rows: list[dict], probability_column: str) -> np.ndarray:
    """Per row of a patient predictions table, its ``score`` where the table has one (any
    table this version writes), else :func:`probability_score` of ``probability_column``."""
    return np.array(
        [
            float(row["score"]) if str(row.get("score", "")) not in ("", "nan")
            else float(probability_score(float(row[probability_column])))
            for row in rows
        ],
        dtype=np.float64,
    )


def patient_scores(
    patient: np.ndarray,
    logits: np.ndarray,
    method: str = "mean",
    weights: np.ndarray | None = None,
    temperature: float = 1.0,
) -> dict[str, np.ndarray]:
    """Slice logits (``[N, K]`` or ``[N, V, K]``) of patients ``patient`` [N] to
    ``{"patients", "slice_log_probs", "log_probs", "probs", "counts"}`` and, with two classes,
    ``"score"`` (per patient) and ``"slice_score"``; see the module's docstring."""
    per_slice = slice_log_probs(logits, temperature)
    patients, log_probs, counts = patient_log_probs(patient, per_slice, method, weights)
    out = {
        "patients": patients,
        "slice_log_probs": per_slice,
        "log_probs": log_probs,
        "probs": np.exp(log_probs),
        "counts": counts,
    }
    if log_probs.shape[1] == 2:
        out["score"] = positive_score(log_probs)
        out["slice_score"] = positive_score(per_slice)
    return out

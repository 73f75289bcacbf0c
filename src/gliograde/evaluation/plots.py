"""Figures of an evaluation: ROC, reliability diagram, per-patient strip, Grad-CAM overlays."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from gliograde.evaluation.figures import confusion_figure, wrapped  # noqa: E402

__all__ = [
    "confusion_figure",
    "gradcam_figure",
    "reliability_figure",
    "roc_figure",
    "slice_curve_figure",
    "strip_figure",
]


def roc_figure(labels: np.ndarray, probs: np.ndarray, title: str) -> plt.Figure:
    """ROC curve of a positive-class score (the probability or any monotone function of it, such
    as its log-odds), with its AUC."""
    fpr, tpr, _ = roc_curve(labels, probs)
    auc = roc_auc_score(labels, probs)
    figure, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(wrapped(title, 3.6))
    ax.legend(loc="lower right")
    figure.tight_layout()
    return figure


def reliability_figure(
    labels: np.ndarray, probs: np.ndarray, bins: int = 10, uncalibrated: np.ndarray | None = None
) -> plt.Figure:
    """Observed positive rate against mean predicted probability per bin, with bin sizes; with
    ``uncalibrated`` (the probabilities before calibration) both curves are drawn."""
    figure, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    curves = [("calibrated", probs, "C0")] if uncalibrated is not None else [(None, probs, "C0")]
    if uncalibrated is not None:
        curves.insert(0, ("before calibration", uncalibrated, "C1"))
    for c, (name, values, colour) in enumerate(curves):
        observed, predicted = calibration_curve(labels, values, n_bins=bins, strategy="uniform")
        counts = np.bincount(
            np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], values), minlength=bins
        )  # as sklearn bins
        sizes = counts[counts > 0]
        ax.plot(predicted, observed, marker="o", ms=5, c=colour, label=name, clip_on=False, zorder=3)
        for k, (x, y, n) in enumerate(zip(predicted, observed, sizes)):
            # neighbouring bins (and the two curves) alternate sides, so that their counts stay apart
            above = (k + c) % 2 == 0
            ax.annotate(
                f"n={n}", (x, y), textcoords="offset points", xytext=(0, 7 if above else -12),
                ha="center", fontsize=8, color=colour,
            )
    if uncalibrated is not None:
        ax.legend(fontsize=7, loc="upper left")
    # a margin around [0, 1]: points at 0 or 1 (all or none of a bin positive) stay off the frame
    ax.set_xlim(-0.08, 1.08)
    ax.set_ylim(-0.1, 1.1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title("reliability (patients)")
    figure.tight_layout()
    return figure


def strip_figure(labels: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float) -> plt.Figure:
    """Each patient's probability of the positive class, one column per true class."""
    rng = np.random.default_rng(0)
    figure, ax = plt.subplots(figsize=(3.6, 3.4))
    for k, name in enumerate(classes):
        values = probs[labels == k]
        ax.scatter(k + rng.uniform(-0.15, 0.15, len(values)), values, s=14, alpha=0.8)
    ax.axhline(threshold, ls="--", c="grey", lw=1)
    ax.set_xticks(range(len(classes)), [f"{c}\n(true)" for c in classes])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel(f"p({classes[-1]})")
    ax.set_title(wrapped("per-patient probability", 3.6))
    figure.tight_layout()
    return figure


def _modality_panels(image: np.ndarray, modalities: tuple[str, ...], title: str, overlay) -> plt.Figure:
    """One slice: each modality in grey, ``overlay(ax)`` drawn over each."""
    channels = image.shape[0]
    figure, axes = plt.subplots(1, channels, figsize=(2.6 * channels, 2.9), squeeze=False)
    for c in range(channels):
        ax = axes[0][c]
        ax.imshow(image[c], cmap="gray")
        overlay(ax)
        ax.set_title(modalities[c])
        ax.axis("off")
    figure.suptitle(wrapped(title, 2.6 * channels, 9), fontsize=9)
    figure.tight_layout()
    return figure


def gradcam_figure(
    image: np.ndarray, heat: np.ndarray, modalities: tuple[str, ...], title: str
) -> plt.Figure:
    """One slice: each modality in grey with the Grad-CAM heat map over it."""
    return _modality_panels(
        image, modalities, title, lambda ax: ax.imshow(heat, cmap="jet", alpha=0.35, vmin=0, vmax=1)
    )


def outline_figure(
    image: np.ndarray, outline: np.ndarray, modalities: tuple[str, ...], title: str
) -> plt.Figure:
    """One slice: each modality in grey with the predicted tumour's outline drawn over it."""

    def draw(ax) -> None:
        if outline.any():
            ax.contour(outline.astype(np.float32), levels=[0.5], colors="lime", linewidths=1.2)

    return _modality_panels(image, modalities, title, draw)


def slice_curve_figure(
    slice_index: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float, title: str
) -> plt.Figure:
    """One patient's slice probabilities of the last class along the slice axis, with their mean."""
    figure, ax = plt.subplots(figsize=(5.5, 3.2))
    positive = probs[:, -1]
    ax.plot(slice_index, positive, marker="o", ms=3, lw=1)
    ax.axhline(float(positive.mean()), c="C1", lw=1, label=f"patient mean {positive.mean():.3f}")
    ax.axhline(threshold, ls="--", c="grey", lw=1, label=f"threshold {threshold:g}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("slice index")
    ax.set_ylabel(f"p({classes[-1]})")
    ax.set_title(wrapped(title, 5.5, 9), fontsize=9)
    ax.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure

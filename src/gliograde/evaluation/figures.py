"""Figure helpers shared by training callbacks and evaluation, and the atomic PNG writer."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402


def confusion_figure(
    labels: np.ndarray, predicted: np.ndarray, classes: list[str], title: str = "patients (test)"
) -> plt.Figure:
    """A labelled confusion-matrix heat map (rows: true class, columns: predicted)."""
    matrix = confusion_matrix(labels, predicted, labels=list(range(len(classes))))
    figure, ax = plt.subplots(figsize=(3.2, 3.0))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(wrapped(title, 3.2))
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "black")
    figure.tight_layout()
    return figure


def wrapped(title: str, width_in: float, fontsize: float = 12) -> str:
    """``title`` broken into lines that fit a figure ``width_in`` inches wide at ``fontsize``
    points (an average character is about 0.6 em; a tenth kept for the margins), so that no title
    is cut at the edge."""
    width = max(12, int(width_in * 72 * 0.9 / (fontsize * 0.6)))
    return textwrap.fill(title, width=width, break_on_hyphens=False)


def sample_grid(
    samples: Sequence[Mapping[str, Any]], modalities: Sequence[str], classes: Sequence[str]
) -> plt.Figure:
    """Slices as rows, modalities as columns; each sample holds ``image`` [C, H, W], ``label``,
    ``patient_id`` and ``slice_index`` (one item of a slice dataset)."""
    rows, cols = len(samples), len(modalities)
    figure, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for r, sample in enumerate(samples):
        image = np.asarray(sample["image"], dtype=np.float32)
        label = int(sample["label"])
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(image[c], cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(modalities[c])
        axes[r][0].set_ylabel(
            f"{sample['patient_id']}\nz={int(sample['slice_index'])} {classes[label] if label >= 0 else '?'}",
            fontsize=7,
        )
    figure.tight_layout()
    return figure


def save_png(figure: plt.Figure, path: str | Path, dpi: int = 110) -> None:
    """Write ``figure`` as PNG to a temporary sibling, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        figure.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

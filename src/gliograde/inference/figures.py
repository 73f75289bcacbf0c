"""predict.py's per-patient figures: the slice-probability curve, Grad-CAM and the predicted
tumour's outline on the most decisive slice, each saved as PNG through a temporary name."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def slice_curve(slices, probs, classes, threshold):
    """One patient's slice probabilities along the slice axis, with the mean and the threshold."""
    from gliograde.evaluation import plots

    title = f"{slices.patient_id}: slice rule {slices.slice_rule}, {len(probs)} slices"
    return plots.slice_curve_figure(slices.slice_index, probs, classes, threshold, title)


def outline_figure(slices, probs, call, classes, contract, mask: np.ndarray):
    """The predicted tumour's outline on the patient's most decisive slice (as Grad-CAM's)."""
    from gliograde.data.batches.crops import centre_channels, crop
    from gliograde.evaluation import plots
    from gliograde.inference.stream import _cut

    best = int(np.argmax(probs[:, call]))
    index = int(slices.slice_index[best])
    outline = _cut(mask[:, None], np.array([index]), [0], plane_of(contract))
    if slices.centres is not None:
        outline = crop(outline, slices.centres[best : best + 1], int(contract["crop"]["size"]))
    modalities = tuple(contract["modalities"])
    image = slices.images[best].astype(np.float32)[centre_channels(len(modalities), int(contract.get("context", 0)))]
    title = (
        f"{slices.patient_id} slice {index}: the segmenter's tumour outline; predicted {classes[call]} "
        f"(slice p({classes[-1]})={probs[best, -1]:.2f})"
    )
    return plots.outline_figure(image, outline[0, 0], modalities, title)


def plane_of(contract: Mapping[str, Any]) -> str:
    """The plane of the contract's slices."""
    return str(contract["slices"]["plane"])


def gradcam_figure(model, slices, probs, predicted, classes, contract, mean):
    """The Grad-CAM of the patient's most decisive slice for the class ``predicted``."""
    from gliograde.data.batches.crops import centre_channels
    from gliograde.evaluation import plots

    best = int(np.argmax(probs[:, predicted]))  # the slice that speaks most for the call
    image = slices.images[best].astype(np.float32)
    heat = model.grad_cam(image, predicted)
    title = (
        f"{slices.patient_id} slice {int(slices.slice_index[best])}: predicted {classes[predicted]} "
        f"(p({classes[-1]})={mean[-1]:.2f}; this slice p({classes[-1]})={probs[best, -1]:.2f})"
    )
    modalities = tuple(contract["modalities"])
    shown = image[centre_channels(len(modalities), int(contract.get("context", 0)))]  # the centre slice
    return plots.gradcam_figure(shown, heat, modalities, title)


def save_png(figure, path: Path) -> str:
    """Save ``figure`` as PNG through a temporary name; return the file name."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        figure.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(figure)
    return path.name


def safe_name(name: str) -> str:
    """``name`` (a patient id) as a file name stem: anything but letters, digits, ``._-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)

"""A picture per ingested patient: the template's brain outline over the registered FLAIR and
T1ce in three planes, so a bad registration is seen at a glance."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

_PLANES = ("axial", "coronal", "sagittal")
_SHOWN = ("flair", "t1ce")


def registration_figure(volumes: Mapping[str, sitk.Image], outline: sitk.Image, title: str):
    """A matplotlib figure: rows FLAIR and T1ce (those present, else the first two volumes),
    columns axial, coronal and sagittal through the outline's centre, the outline in yellow.

    ``outline`` is the template's brain (probability or mask) on the volumes' grid.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in _SHOWN if m in volumes] or list(volumes)[:2]
    brain = sitk.GetArrayFromImage(outline) >= 0.5  # (z, y, x)
    centre = _centre(brain)
    fig, axes = plt.subplots(len(shown), 3, figsize=(9, 3.1 * len(shown)), squeeze=False)
    for row, modality in enumerate(shown):
        image = sitk.GetArrayFromImage(volumes[modality]).astype(np.float32)
        high = float(np.percentile(image[brain], 99.5)) if brain.any() else float(image.max() or 1)
        for col, plane in enumerate(_PLANES):
            ax = axes[row][col]
            # axial: anterior (low y in LPS) at the top; coronal and sagittal: superior at the top
            origin = "upper" if plane == "axial" else "lower"
            ax.imshow(_cut(image, plane, centre), cmap="gray", vmin=0, vmax=high or 1, origin=origin)
            ax.contour(
                _cut(brain.astype(np.float32), plane, centre),
                levels=[0.5],
                colors="yellow",
                linewidths=0.8,
                origin=origin,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{modality} {plane}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _centre(brain: np.ndarray) -> tuple[int, int, int]:
    if not brain.any():
        return tuple(s // 2 for s in brain.shape)  # type: ignore[return-value]
    return tuple(int(round(c)) for c in np.argwhere(brain).mean(axis=0))  # type: ignore[return-value]


def _cut(volume: np.ndarray, plane: str, centre: tuple[int, int, int]) -> np.ndarray:
    """A plane of a (z, y, x) array, the patient's head upward in coronal and sagittal views."""
    z, y, x = centre
    if plane == "axial":
        return volume[z]
    if plane == "coronal":
        return volume[:, y, :]
    return volume[:, :, x]

"""Per-patient preprocessing: validate voxels, z-score each modality inside the brain, and
measure per-slice brain and tumour areas for slice selection. Writes into a cache slot."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gliograde.data.errors import DataError
from gliograde.data.nifti import read_voxels
from gliograde.data.specs import MODALITIES, PLANES

# Axes of a (z, y, x) array summed to get one number per slice of each plane.
_SUM_AXES = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}


@dataclass
class SliceAreas:
    """Per-slice voxel counts of one patient, for each plane (index = slice number)."""

    brain: dict[str, np.ndarray]
    tumour: dict[str, np.ndarray] | None


def preprocess_patient(
    patient: str,
    modalities: Mapping[str, Path],
    mask: Path | None,
    out: np.ndarray,
    mask_labels: tuple[int, ...],
    clip_percentiles: tuple[float, float] | None = None,
    reorient: str | None = None,
) -> SliceAreas:
    """Normalise ``patient``'s four modalities into ``out`` (shape ``[z, 4, y, x]``).

    Raises DataError naming the patient and file for NaN/infinite or all-zero volumes, and
    for mask labels outside ``mask_labels``.
    """
    brain = np.zeros(out.shape[:1] + out.shape[2:], dtype=bool)
    for channel, name in enumerate(MODALITIES):
        path = modalities[name]
        volume = read_voxels(path, patient, reorient).T  # (z, y, x), C-contiguous for .nii
        nonzero = normalise_into(volume, out[:, channel], patient, path, clip_percentiles)
        brain |= nonzero
    areas = {plane: brain.sum(axis=_SUM_AXES[plane], dtype=np.int32) for plane in PLANES}
    tumour = None
    if mask is not None:
        seg = read_voxels(mask, patient, reorient).T
        check_mask_labels(seg, mask_labels, patient, mask)
        in_tumour = seg != 0
        tumour = {p: in_tumour.sum(axis=_SUM_AXES[p], dtype=np.int32) for p in PLANES}
    return SliceAreas(areas, tumour)


def normalise_into(
    volume: np.ndarray,
    out: np.ndarray,
    patient: str,
    path: Path,
    clip_percentiles: tuple[float, float] | None,
) -> np.ndarray:
    """Z-score ``volume`` over its nonzero (brain) voxels into ``out``; background stays 0.

    Returns the nonzero mask.
    """
    nonzero = volume != 0
    values = volume[nonzero]
    if values.size == 0:
        raise DataError("all-zero volume", patient, path)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise DataError(f"{bad} NaN or infinite voxels", patient, path)
    low = high = None
    if clip_percentiles is not None:
        low, high = np.percentile(values, clip_percentiles)
        values = np.clip(values, low, high)
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64)) or 1.0
    scaled = volume.astype(np.float32)
    if low is not None:
        np.clip(scaled, low, high, out=scaled)
    scaled -= np.float32(mean)
    scaled *= np.float32(1.0 / std)
    scaled[~nonzero] = 0.0
    out[...] = scaled
    return nonzero


def check_mask_labels(seg: np.ndarray, allowed: tuple[int, ...], patient: str, path: Path) -> None:
    """Every mask voxel must carry one of the layout's labels."""
    if seg.dtype.kind == "f":
        if not np.isfinite(seg).all() or not np.array_equal(seg, np.round(seg)):
            raise DataError("mask has non-integer values", patient, path)
    low, high = seg.min(), seg.max()
    if low < 0 or high > 255:
        raise DataError(
            f"mask labels {sorted({int(low), int(high)} - set(allowed))} outside {list(allowed)}",
            patient,
            path,
        )
    present = np.flatnonzero(np.bincount(seg.astype(np.uint8, copy=False).ravel(), minlength=256))
    unexpected = sorted(set(int(v) for v in present) - set(allowed))
    if unexpected:
        raise DataError(f"mask labels {unexpected} outside {list(allowed)}", patient, path)

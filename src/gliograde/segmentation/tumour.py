"""Measures of a whole-tumour mask, in the cache's terms: per-slice areas and boxes, volume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gliograde.data.batches.crops import slice_boxes
from gliograde.data.discovery.specs import PLANES

# The axes of a (z, y, x) array summed for each plane's per-slice area, as preprocessing sums them.
_SUM_AXES = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}


@dataclass
class TumourMeasures:
    """Per plane, each slice's tumour voxel count (int32, as the cache's ``tumour_area``) and box
    (``[n, 4]`` int32, -1 where none, as ``data.crops.slice_boxes``); the total voxel count."""

    areas: dict[str, np.ndarray]
    boxes: dict[str, np.ndarray]
    voxels: int


def tumour_measures(mask: np.ndarray) -> TumourMeasures:
    """The measures of a bool ``[z, y, x]`` whole-tumour mask."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"a tumour mask is [z, y, x]; got shape {mask.shape}")
    areas = {plane: mask.sum(axis=_SUM_AXES[plane], dtype=np.int32) for plane in PLANES}
    boxes = {plane: slice_boxes(mask, plane) for plane in PLANES}
    return TumourMeasures(areas, boxes, int(np.count_nonzero(mask)))


def volume_ml(voxels: int, spacing: Sequence[float]) -> float:
    """The volume in millilitres of ``voxels`` voxels of ``spacing`` (mm per axis)."""
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise ValueError(f"voxel spacing must be three positive sizes in mm; got {list(spacing)}")
    return float(voxels) * float(np.prod([float(s) for s in spacing])) / 1000.0

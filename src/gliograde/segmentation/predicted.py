"""A segmenter's tumour for a patient without a mask: its measures, its volume in mL, and
whether a tumour was found at all (a patient without one is reported, never graded on slices
chosen from an empty mask)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gliograde.segmentation.tumour import TumourMeasures, tumour_measures, volume_ml

MIN_TUMOUR_ML = 0.5
"""Below this predicted volume a patient counts as having no tumour: specks of a few voxels are
noise, not a glioma (BraTS whole tumours span a few to a few hundred mL)."""


class SegmentsVolumes(Protocol):
    """What segments a patient: a checkpoint's or an export's segmenter."""

    def segment(self, volume: np.ndarray, stored: Sequence[str]) -> np.ndarray: ...


@dataclass
class PredictedTumour:
    """One patient's predicted whole-tumour mask ``[z, y, x]``, its measures and volume."""

    mask: np.ndarray
    measures: TumourMeasures
    ml: float | None  # None where the grid's voxel spacing is unknown
    min_ml: float = MIN_TUMOUR_ML  # the smallest volume that counts as a tumour

    @property
    def found(self) -> bool:
        """Whether the segmenter found a tumour (at least ``min_ml``, or any voxel without a spacing)."""
        if self.ml is None or self.measures.voxels == 0:
            return self.measures.voxels > 0
        return self.ml >= self.min_ml

    def not_found(self) -> str:
        """Why the patient is not graded, for reports."""
        size = f"{self.ml:.2f} mL" if self.ml is not None else f"{self.measures.voxels} voxels"
        return f"the segmenter found no tumour ({size} predicted, below min_tumour_ml={self.min_ml:g}): not graded"


def grid_spacing(contract: Mapping[str, Any]) -> list[float] | None:
    """The voxel spacing (mm) of a contract's grid, in (x, y, z) order; None when not recorded."""
    grid = contract.get("grid") or {}
    spacing = grid.get("spacing")
    return [float(s) for s in spacing] if spacing else None


def predict_tumour(
    segmenter: SegmentsVolumes,
    volume: np.ndarray,
    stored: Sequence[str],
    spacing: Sequence[float] | None,
    min_ml: float = MIN_TUMOUR_ML,
) -> PredictedTumour:
    """Segment one patient's preprocessed ``volume`` ``[z, C, y, x]`` (channels ``stored``)."""
    if isinstance(volume, np.ma.MaskedArray):  # slices a slab cache does not hold: no brain there
        volume = volume.filled(0)
    mask = segmenter.segment(volume, stored)
    measures = tumour_measures(mask)
    ml = volume_ml(measures.voxels, spacing) if spacing else None
    return PredictedTumour(mask, measures, ml, min_ml)


def mask_ml(voxels: int, spacing: Sequence[float] | None) -> float | None:
    """``voxels`` in mL, None without a spacing."""
    return volume_ml(voxels, spacing) if spacing else None


def segmenter_note(entry: Mapping[str, Any] | None) -> str | None:
    """One sentence on what a report's segmenter did (``report["segmenter"]``); None without one."""
    if not entry:
        return None
    missing = entry.get("no_tumour") or {}
    text = (
        f"segmenter {entry['source']} predicted the tumour mask of {entry['patients_segmented']} patient(s) "
        "without one"
    )
    if missing:
        names = ", ".join(sorted(missing))
        text += f"; it found no tumour in {len(missing)} (not graded): {names}"
    return text

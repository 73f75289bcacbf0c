"""Slice selection: which 2D slices of each cached patient become samples."""

from __future__ import annotations

import numpy as np

from gliograde.data.errors import DataError
from gliograde.data.discovery.specs import PLANES, SliceSpec
from gliograde.errors import ConfigError

STRATEGIES = ("tumor_topk", "tumor_all", "brain", "middle", "range")
NEEDS_MASK = ("tumor_topk", "tumor_all")


def validate_slice_spec(spec: SliceSpec) -> None:
    """Reject unknown strategies and planes before any work starts."""
    if spec.strategy not in STRATEGIES:
        raise ConfigError(f"data.slices.strategy={spec.strategy!r} is not one of {list(STRATEGIES)}")
    if spec.plane not in PLANES:
        raise ConfigError(f"data.slices.plane={spec.plane!r} is not one of {list(PLANES)}")


def select_slices(
    patient: str,
    brain_area: np.ndarray,
    tumour_area: np.ndarray | None,
    spec: SliceSpec,
    mask_hint: str | None = None,
) -> np.ndarray:
    """Indices (ascending) of the slices of one patient that ``spec`` selects.

    ``brain_area``/``tumour_area`` are per-slice voxel counts along ``spec.plane``;
    ``tumour_area`` is None for a patient without a mask; ``mask_hint`` names the mask file
    that was looked for, for the error message.
    """
    strategy = spec.strategy
    if strategy in NEEDS_MASK:
        if tumour_area is None:
            raise DataError(
                f"no tumour mask, which data.slices.strategy={strategy} needs "
                "(use brain, middle or range for cohorts without masks)",
                patient,
                mask_hint,
            )
        if strategy == "tumor_topk":
            candidates = np.flatnonzero(tumour_area > 0)
            order = candidates[np.argsort(-tumour_area[candidates], kind="stable")]
            return np.sort(order[: spec.k])
        return np.flatnonzero(tumour_area >= spec.min_area)
    if strategy == "brain":
        if brain_area.max() == 0:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(brain_area >= spec.min_brain_fraction * brain_area.max())
    if strategy == "middle":
        inside = np.flatnonzero(brain_area > 0)
        if inside.size == 0:
            return inside
        centre = (inside[0] + inside[-1]) // 2
        start = max(inside[0], centre - spec.n // 2)
        stop = min(inside[-1] + 1, start + spec.n)
        return np.arange(start, stop)
    if strategy == "range":
        n = brain_area.size
        low = spec.z_min + n if spec.z_min < 0 else spec.z_min
        high = spec.z_max + n if spec.z_max < 0 else spec.z_max
        return np.arange(max(low, 0), min(high, n - 1) + 1)
    raise ConfigError(f"unknown slice strategy {strategy!r}")

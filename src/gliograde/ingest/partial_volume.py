"""Where a series saw only brain: the part of the model grid whose acquired voxels lie wholly
inside the brain.

A thick slice (a 5 mm FLAIR, a 4 mm T2) averages everything it spans. Where it crosses the brain's
surface, mostly at the top and bottom of an axial stack, its voxels mix brain with CSF and skull;
resampled to 1 mm these voxels look like tissue that is neither, and a T2-bright rim of CSF reads
as oedema to a segmenter or a classifier trained on skull-stripped 1 mm data. Those voxels are left
out of the brain rather than handed over as brain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

MIN_BRAIN_FRACTION = 0.9
"""A model voxel stays brain when every series' voxels around it are at least this much brain."""


COARSER = 1.5
"""Series with voxels this much coarser than the model grid's (along any axis) must see
``MIN_BRAIN_FRACTION`` brain; finer ones, half (their own field of view)."""


def acquired_brain_fraction(brain: sitk.Image, series: sitk.Image, to_series: sitk.Transform) -> sitk.Image:
    """On ``brain``'s grid (the model grid), the fraction of brain inside the series' acquired
    voxels around each point: ``brain`` is carried onto a sub-grid that splits each series voxel
    into pieces no coarser than the model's spacing, averaged back into whole series voxels (as
    the scanner averaged the slice), and brought back. ``to_series`` maps model points to series
    points (the transform the series is resampled with). Outside the series' field of view the
    fraction is 0."""
    factors = [max(1, int(round(s / min(brain.GetSpacing())))) for s in series.GetSpacing()]
    spacing = np.asarray(series.GetSpacing(), dtype=float)
    direction = np.asarray(series.GetDirection(), dtype=float).reshape(3, 3)
    pieces = sitk.Image([n * f for n, f in zip(series.GetSize(), factors)], sitk.sitkFloat32)
    pieces.SetSpacing(tuple(spacing / factors))
    # The first piece's centre: half a series voxel back from its centre, half a piece forward.
    offset = (-0.5 + 0.5 / np.asarray(factors)) * spacing
    pieces.SetOrigin(tuple(np.asarray(series.GetOrigin()) + direction @ offset))
    pieces.SetDirection(series.GetDirection())
    inside = sitk.Resample(
        sitk.Cast(brain > 0, sitk.sitkFloat32), pieces, to_series.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    acquired = sitk.BinShrink(inside, factors)  # the mean over each series voxel's pieces
    return sitk.Resample(acquired, brain, to_series, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def wholly_acquired_brain(
    brain: sitk.Image,
    series: Sequence[tuple[sitk.Image, sitk.Transform]],
    min_fraction: float = MIN_BRAIN_FRACTION,
) -> sitk.Image:
    """``brain`` less the voxels where any of ``series`` (image, model-to-series transform) saw
    too little brain: a series with voxels coarser than the model grid's less than
    ``min_fraction`` (its thick slices' partial volume with what surrounds the brain), any series
    less than half (its field of view ending inside the brain)."""
    kept = sitk.Cast(brain > 0, sitk.sitkUInt8)
    for image, to_series in series:
        # A series as fine as the model grid mixes its surface voxels no more than the grid does:
        # only its field of view is checked.
        coarse = max(image.GetSpacing()) >= COARSER * min(brain.GetSpacing())
        least = min_fraction if coarse else 0.5
        kept = kept & sitk.Cast(acquired_brain_fraction(brain, image, to_series) >= least, sitk.sitkUInt8)
    return kept

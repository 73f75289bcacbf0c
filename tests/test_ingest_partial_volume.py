"""Thick slices at the brain's surface: the model voxels whose acquired voxels mixed brain with
what surrounds it are left out of the brain, at the caps of an axial stack (not its sides), where a
series' field of view ends, and through the series' own pose."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from gliograde.ingest.partial_volume import acquired_brain_fraction, wholly_acquired_brain

SIZE = 64  # 1 mm voxels, a ball of radius 20 mm in the middle


def _ball_brain() -> sitk.Image:
    z, y, x = np.mgrid[:SIZE, :SIZE, :SIZE] - (SIZE - 1) / 2
    image = sitk.GetImageFromArray(((x**2 + y**2 + z**2) <= 20.0**2).astype(np.uint8))
    image.SetOrigin((-(SIZE - 1) / 2,) * 3)  # physical (0, 0, 0) at the ball's centre
    return image


def _axial_series(slice_mm: float, z_from: float = -40.0, z_to: float = 40.0) -> sitk.Image:
    """An empty axial series, 1 mm in plane, ``slice_mm`` slices whose centres run from z_from."""
    slices = int(round((z_to - z_from) / slice_mm))
    series = sitk.Image([80, 80, slices], sitk.sitkInt16)
    series.SetSpacing((1.0, 1.0, slice_mm))
    series.SetOrigin((-39.5, -39.5, z_from + slice_mm / 2))
    return series


def _kept(brain: sitk.Image, series: sitk.Image, to_series: sitk.Transform | None = None) -> np.ndarray:
    kept = wholly_acquired_brain(brain, [(series, to_series or sitk.Transform())])
    return sitk.GetArrayFromImage(kept).astype(bool)  # [z, y, x]


def _extent(mask: np.ndarray, axis: int) -> tuple[int, int]:
    """First and last index along ``axis`` (0=z, 1=y, 2=x) through the volume's centre lines."""
    centre = SIZE // 2
    line = {0: mask[:, centre, centre], 1: mask[centre, :, centre], 2: mask[centre, centre, :]}[axis]
    where = np.flatnonzero(line)
    return int(where[0]), int(where[-1])


def test_inside_a_one_millimetre_series_the_brain_is_kept_whole():
    brain = _ball_brain()
    fraction = sitk.GetArrayFromImage(acquired_brain_fraction(brain, _axial_series(1.0), sitk.Transform()))
    inside = sitk.GetArrayFromImage(brain).astype(bool)
    assert fraction[SIZE // 2, SIZE // 2, SIZE // 2] == pytest.approx(1.0)
    kept = _kept(brain, _axial_series(1.0))
    assert kept.sum() >= 0.97 * inside.sum()  # as fine as the grid: its surface is the grid's own
    assert not (kept & ~inside).any()  # never more than the brain


def test_thick_slices_lose_the_caps_of_the_brain_not_its_sides():
    brain = _ball_brain()
    whole = sitk.GetArrayFromImage(brain).astype(bool)
    kept = _kept(brain, _axial_series(5.0))
    top, bottom = _extent(whole, 0), _extent(kept, 0)
    # A 5 mm slice centred within 2.5 mm of the cap is part CSF and skull: at least 2 mm go at each cap.
    assert bottom[0] - top[0] >= 2 and top[1] - bottom[1] >= 2, (top, bottom)
    # Across the slice, 1 mm voxels: the sides lose at most the surface voxel.
    for axis in (1, 2):
        full, left = _extent(whole, axis), _extent(kept, axis)
        assert left[0] - full[0] <= 1 and full[1] - left[1] <= 1, (axis, full, left)


def test_where_a_series_field_of_view_ends_the_brain_ends():
    brain = _ball_brain()
    kept = _kept(brain, _axial_series(1.0, z_from=-40.0, z_to=0.0))  # covers z < 0 mm only
    z_of_index = np.arange(SIZE) - (SIZE - 1) / 2
    assert not kept[z_of_index > 0.5].any()
    assert kept[z_of_index < -1.0].sum() >= 0.85 * sitk.GetArrayFromImage(brain)[z_of_index < -1.0].sum()


def test_the_series_pose_is_followed():
    """The same field of view, the patient 15 mm to the side and 10 mm higher in the series' space:
    the brain that series saw ends 10 mm lower on the model grid, and is the brain that is there."""
    brain = _ball_brain()
    shifted = sitk.TranslationTransform(3, (15.0, 0.0, 10.0))  # model point -> series point
    kept = _kept(brain, _axial_series(1.0, z_from=-40.0, z_to=0.0), shifted)
    z_of_index = np.arange(SIZE) - (SIZE - 1) / 2
    whole = sitk.GetArrayFromImage(brain).astype(bool)
    assert not kept[z_of_index > -9.5].any()
    assert not (kept & ~whole).any()  # the brain stays where it is: only the series moved
    assert kept[z_of_index < -11.0].sum() >= 0.85 * whole[z_of_index < -11.0].sum()


def test_every_series_counts():
    brain = _ball_brain()
    thin, thick = _axial_series(1.0), _axial_series(5.0)
    both = wholly_acquired_brain(brain, [(thin, sitk.Transform()), (thick, sitk.Transform())])
    assert np.array_equal(sitk.GetArrayFromImage(both).astype(bool), _kept(brain, thin) & _kept(brain, thick))

"""The lean cache: only each patient's brain box is stored, yet every batch equals the full grid's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gliograde.data.caching.cache import open_or_build
from gliograde.data.caching.cache_box import BOX_MARGIN, BoxLayout
from gliograde.data.discovery.cohort import discover_cohort
from gliograde.data.batches.dataset import SliceDataset
from gliograde.data.discovery.specs import MODALITIES, PLANES, LabelSpec, LayoutSpec, PreprocessSpec

AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}


@pytest.fixture(scope="module")
def both_caches(tiny_cohort_master, tmp_path_factory):
    """The tiny cohort cached twice: lean (the default margin) and on the full grid."""
    records = discover_cohort(tiny_cohort_master, LayoutSpec(), LabelSpec(), True).patients
    cache_dir = tmp_path_factory.mktemp("lean-cache")

    def build(margin):
        spec = PreprocessSpec(workers=1)
        labels = LayoutSpec().mask_labels
        return open_or_build(records, cache_dir, spec, labels, progress=False, box_margin=margin)

    return build(BOX_MARGIN), build(None)


def _dataset(volumes_path: Path, layout: BoxLayout, plane: str, modalities, dtype) -> SliceDataset:
    """Every slice of ``plane`` of every patient (slot = position), in a shuffled order."""
    patients = len(layout.depth)
    count = layout.grid[AXIS[plane]]
    order = np.random.default_rng(0).permutation(patients * count)
    positions = np.repeat(np.arange(patients), count)[order]
    return SliceDataset(
        volumes_path=volumes_path,
        layout=layout,
        slots=positions,
        patient_positions=positions,
        slice_indices=np.tile(np.arange(count), patients)[order],
        labels=np.zeros(len(positions), dtype=np.int64),
        patient_ids=tuple(f"P{i}" for i in range(patients)),
        modalities=modalities,
        plane=plane,
        dtype=dtype,
    )


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    view = {torch.float16: torch.int16, torch.float32: torch.int32}[a.dtype]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(view), b.view(view))


def test_the_lean_cache_stores_less_than_the_grid(both_caches):
    lean, full = both_caches
    x, y, z = lean.shape
    n = len(lean.patient_ids)
    assert full.layout.is_full and not lean.layout.is_full and lean.layout.grid == (z, y, x)
    assert np.array_equal(lean.slots, np.arange(n))
    stored = np.load(lean.volumes_path, mmap_mode="r")
    assert stored.shape == (lean.layout.rows, len(MODALITIES), *lean.layout.block)
    assert lean.volumes_path.stat().st_size < 0.8 * full.volumes_path.stat().st_size
    assert lean.directory != full.directory  # the margin is part of the key
    assert not (lean.directory / "grid.npy").exists()
    meta = json.loads((lean.directory / "meta.json").read_text())
    expected = {"margin": BOX_MARGIN, "block_yx": list(lean.layout.block), "rows": lean.layout.rows}
    assert meta["box"] == expected


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("modalities", [("flair", "t1", "t1ce", "t2"), ("t2", "flair")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_batches_are_bit_identical_to_the_full_grid(both_caches, plane, modalities, dtype):
    lean, full = both_caches
    got = _dataset(lean.volumes_path, lean.layout, plane, modalities, dtype)
    want = _dataset(full.volumes_path, full.layout, plane, modalities, dtype)
    everything = list(range(len(got)))
    a, b = got.__getitems__(everything)["image"], want.__getitems__(everything)["image"]
    assert a.dtype == dtype and _same_bits(a, b) and torch.count_nonzero(a) > 0
    assert _same_bits(got[3]["image"], want[3]["image"])


@pytest.mark.parametrize("plane", PLANES)
def test_slices_outside_the_box_read_as_zeros(tmp_path, plane):
    """Boxes inside the grid on every axis, at different origins: batches mix slices in and out."""
    grid = (9, 10, 11)
    layout = BoxLayout.around([((2, 3, 1), (6, 7, 8)), ((1, 4, 5), (4, 9, 11))], grid, margin=1)
    rng = np.random.default_rng(1)
    full = np.zeros((2, 9, len(MODALITIES), 10, 11), dtype=np.float16)
    for slot in range(2):
        block = layout.crop(slot, full[slot])
        block[...] = rng.standard_normal(block.shape) + 5
    np.save(tmp_path / "full.npy", full.reshape(-1, len(MODALITIES), 10, 11))
    np.save(tmp_path / "lean.npy", np.concatenate([layout.crop(slot, full[slot]) for slot in range(2)]))
    for dtype in (torch.float16, torch.float32):
        want = _dataset(tmp_path / "full.npy", BoxLayout.full(grid, 2), plane, ("t2", "flair"), dtype)
        got = _dataset(tmp_path / "lean.npy", layout, plane, ("t2", "flair"), dtype)
        for batch in (list(range(len(got))), [0], list(range(5))):
            assert _same_bits(got.__getitems__(batch)["image"], want.__getitems__(batch)["image"])
    start = layout.origin[got.slots, AXIS[plane]]
    extent = layout.depth[got.slots] if plane == "axial" else layout.block[AXIS[plane] - 1]
    outside = np.flatnonzero((got.slice_indices < start) | (got.slice_indices >= start + extent))
    assert len(outside) and torch.count_nonzero(got.__getitems__(outside.tolist())["image"]) == 0


def test_volume_puts_each_patient_back_on_the_full_grid(both_caches):
    lean, full = both_caches
    for position in range(len(lean.patient_ids)):
        np.testing.assert_array_equal(lean.volume(position), full.volume(position))
    for plane in PLANES:
        np.testing.assert_array_equal(
            lean.brain_area_of(lean.modalities, plane), full.brain_area_of(full.modalities, plane)
        )


def test_layout_holds_every_box_with_its_margin_in_y_and_x_inside_the_grid():
    boxes = [((3, 0, 6), (5, 4, 14)), ((1, 5, 7), (2, 8, 9))]
    layout = BoxLayout.around(boxes, (10, 12, 14), margin=2)
    assert layout.block == (7, 10)  # the widest box plus its margin, clipped to the grid
    assert layout.origin.tolist() == [[3, 0, 4], [1, 3, 4]]  # the slices are the slab given
    assert layout.depth.tolist() == [2, 1] and layout.first_row.tolist() == [0, 2] and layout.rows == 3
    for (start, stop), origin, depth in zip(boxes, layout.origin, layout.depth):
        assert all(o <= a for o, a in zip(origin, start))
        assert origin[0] + depth >= stop[0]
        assert all(o + b >= e for o, b, e in zip(origin[1:], layout.block, stop[1:]))
    assert BoxLayout.around(boxes, (10, 12, 14), margin=None).is_full
    again = BoxLayout.from_arrays(layout.to_arrays())
    assert again.block == layout.block and np.array_equal(again.origin, layout.origin)
    with pytest.raises(ValueError, match="does not fit"):
        BoxLayout((10, 12, 14), (13, 1), np.zeros((1, 3), np.int64), np.ones(1, np.int64))


def test_expand_restores_zeros_around_the_box():
    layout = BoxLayout((4, 5, 7), (2, 3), np.array([[1, 2, 3]]), np.array([2]))
    stored = np.arange(2 * 4 * 2 * 3, dtype=np.float16).reshape(2, 4, 2, 3) + 1
    full = layout.expand(0, stored)
    assert full.shape == (4, 4, 5, 7)
    np.testing.assert_array_equal(full[1:3, :, 2:4, 3:6], stored)
    assert full.sum() == stored.sum()

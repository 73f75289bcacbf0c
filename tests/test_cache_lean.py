"""The lean cache: only the brain's box is stored, yet every batch equals the full grid's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gliograde.data.cache import open_or_build
from gliograde.data.cache_box import BOX_MARGIN, Box, brain_box, union_box
from gliograde.data.cohort import discover_cohort
from gliograde.data.dataset import SliceDataset
from gliograde.data.specs import MODALITIES, PLANES, LabelSpec, LayoutSpec, PreprocessSpec

MODALITY_ORDERS = [("flair", "t1", "t1ce", "t2"), ("t2", "flair")]


@pytest.fixture(scope="module")
def both_caches(tiny_cohort_master, tmp_path_factory):
    """The tiny cohort cached twice: lean (the default box) and on the full grid."""
    records = discover_cohort(tiny_cohort_master, LayoutSpec(), LabelSpec(), True).patients
    cache_dir = tmp_path_factory.mktemp("lean-cache")

    def build(margin):
        spec = PreprocessSpec(workers=1)
        return open_or_build(records, cache_dir, spec, LayoutSpec().mask_labels, progress=False, box_margin=margin)

    return build(BOX_MARGIN), build(None)


def _dataset(volumes_path: Path, box: Box, patients: int, plane: str, modalities, dtype) -> SliceDataset:
    """Every slice of ``plane`` of every patient, in a shuffled order."""
    depth = box.grid[{"axial": 0, "coronal": 1, "sagittal": 2}[plane]]
    positions = np.repeat(np.arange(patients), depth)
    order = np.random.default_rng(0).permutation(len(positions))
    return SliceDataset(
        volumes_path=volumes_path,
        box=box,
        slots=positions[order],
        patient_positions=positions[order],
        slice_indices=np.tile(np.arange(depth), patients)[order],
        labels=np.zeros(len(positions), dtype=np.int64),
        patient_ids=tuple(f"P{i}" for i in range(patients)),
        modalities=modalities,
        plane=plane,
        dtype=dtype,
    )


def _every_slice(cached, plane: str, modalities, dtype) -> dict:
    """One batch holding every slice of ``plane`` of every patient."""
    dataset = _dataset(cached.volumes_path, cached.box, len(cached.patient_ids), plane, modalities, dtype)
    dataset.slots = cached.slots[dataset.patient_positions]
    return dataset.__getitems__(list(range(len(dataset))))


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    view = {torch.float16: torch.int16, torch.float32: torch.int32}[a.dtype]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(view), b.view(view))


def test_the_lean_cache_stores_a_box_smaller_than_the_grid(both_caches):
    lean, full = both_caches
    x, y, z = lean.shape
    assert full.box == Box.full((z, y, x)) and lean.box.grid == (z, y, x)
    assert np.prod(lean.box.shape) < z * y * x
    stored = np.load(lean.volumes_path, mmap_mode="r")
    assert stored.shape == (len(lean.patient_ids), lean.box.shape[0], len(MODALITIES), *lean.box.shape[1:])
    assert lean.volumes_path.stat().st_size < full.volumes_path.stat().st_size
    assert lean.directory != full.directory  # the margin is part of the key


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("modalities", MODALITY_ORDERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_batches_are_bit_identical_to_the_full_grid(both_caches, plane, modalities, dtype):
    lean, full = both_caches
    got = _every_slice(lean, plane, modalities, dtype)
    want = _every_slice(full, plane, modalities, dtype)
    assert got["image"].dtype == dtype and _same_bits(got["image"], want["image"])
    assert torch.equal(got["slice_index"], want["slice_index"])
    assert torch.count_nonzero(got["image"]) > 0


@pytest.mark.parametrize("plane", PLANES)
def test_slices_outside_the_box_read_as_zeros(tmp_path, plane):
    """A box inside the grid on every axis: batches mixing slices inside and outside it."""
    box = Box((2, 3, 1), (6, 7, 8), (9, 10, 11))
    rng = np.random.default_rng(1)
    full = np.zeros((3, *box.grid[:1], len(MODALITIES), *box.grid[1:]), dtype=np.float16)
    zs, ys, xs = box.slices
    full[:, zs, :, ys, xs] = rng.standard_normal(full[:, zs, :, ys, xs].shape) + 5
    np.save(tmp_path / "full.npy", full)
    np.save(tmp_path / "lean.npy", np.ascontiguousarray(full[:, zs, :, ys, xs]))
    for dtype in (torch.float16, torch.float32):
        want = _dataset(tmp_path / "full.npy", Box.full(box.grid), 3, plane, ("t2", "flair"), dtype)
        got = _dataset(tmp_path / "lean.npy", box, 3, plane, ("t2", "flair"), dtype)
        for batch in (list(range(len(got))), [0], list(range(5))):
            a, b = got.__getitems__(batch)["image"], want.__getitems__(batch)["image"]
            assert _same_bits(a, b)
    axis = {"axial": 0, "coronal": 1, "sagittal": 2}[plane]
    outside = np.flatnonzero((want.slice_indices < box.start[axis]) | (want.slice_indices >= box.stop[axis]))
    assert len(outside) and torch.count_nonzero(got.__getitems__(outside.tolist())["image"]) == 0
    assert torch.count_nonzero(got.__getitems__(list(range(len(got))))["image"]) > 0


def test_volume_puts_the_patient_back_on_the_full_grid(both_caches):
    lean, full = both_caches
    for position in range(len(lean.patient_ids)):
        np.testing.assert_array_equal(lean.volume(position), full.volume(position))
    areas = [full.brain_area[p] for p in PLANES]
    assert all(np.array_equal(a, b) for a, b in zip(areas, [lean.brain_area[p] for p in PLANES]))


def test_union_box_widens_by_the_margin_and_stays_on_the_grid():
    brain = np.zeros((10, 12, 14), dtype=bool)
    brain[3:5, 0:4, 6:14] = True
    assert brain_box(brain) == ((3, 0, 6), (5, 4, 14))
    assert brain_box(np.zeros((2, 2, 2), dtype=bool)) is None
    other = ((1, 5, 7), (2, 8, 9))
    box = union_box([brain_box(brain), other, None], (10, 12, 14), margin=2)
    assert box == Box((0, 0, 4), (7, 10, 14), (10, 12, 14))
    assert union_box([other], (10, 12, 14), margin=None).is_full
    assert Box.from_array(box.to_array()) == box
    with pytest.raises(ValueError, match="does not fit"):
        Box((0, 0, 0), (11, 1, 1), (10, 12, 14))


def test_expand_restores_zeros_around_the_box():
    box = Box((1, 2, 3), (3, 4, 6), (4, 5, 7))
    stored = np.arange(2 * 4 * 2 * 3, dtype=np.float16).reshape(2, 4, 2, 3) + 1
    full = box.expand(stored)
    assert full.shape == (4, 4, 5, 7)
    np.testing.assert_array_equal(full[1:3, :, 2:4, 3:6], stored)
    assert full.sum() == stored.sum()


def test_meta_records_the_box(both_caches):
    import json

    lean, _ = both_caches
    meta = json.loads(Path(lean.directory, "meta.json").read_text())
    assert meta["box_zyx"] == {"start": list(lean.box.start), "stop": list(lean.box.stop), "margin": BOX_MARGIN}

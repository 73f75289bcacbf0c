"""The cache's slab: only the axial slices a slice strategy can select (plus a margin) are stored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.cohorts import make_datamodule

from gliograde.data.caching.cache import current_key

from gliograde.data.caching.key import cache_key
from gliograde.data.caching.cache_box import SLAB_MARGIN, SlabRule
from gliograde.data.discovery.cohort import discover_cohort
from gliograde.data.discovery.specs import LabelSpec, LayoutSpec, PreprocessSpec, SliceSpec
from gliograde.errors import ConfigError


@pytest.mark.parametrize(
    ("slices", "rule"),
    [
        ({"strategy": "tumor_topk"}, SlabRule("tumour")),
        ({"strategy": "tumor_all"}, SlabRule("tumour")),
        ({"strategy": "brain"}, SlabRule("brain")),
        ({"strategy": "middle"}, SlabRule("brain")),
        ({"strategy": "range", "z_min": 3, "z_max": -4}, SlabRule("range", SLAB_MARGIN, (3, -4))),
        ({"strategy": "tumor_topk", "plane": "coronal"}, SlabRule("brain")),
        ({"strategy": "range", "plane": "sagittal"}, SlabRule("brain")),
    ],
)
def test_each_strategy_has_the_smallest_slab_holding_what_it_selects(slices, rule):
    assert SlabRule.for_slices(SliceSpec(**slices)) == rule


def test_slab_bounds_widen_the_selectable_slices_by_the_margin_inside_the_grid():
    brain = np.array([0, 0, 5, 9, 9, 9, 9, 4, 0, 0])
    tumour = np.array([0, 0, 0, 0, 3, 2, 0, 0, 0, 0])
    assert SlabRule("brain", 1).bounds(brain, tumour) == (1, 9)
    assert SlabRule("brain", 3).bounds(brain, None) == (0, 10)
    assert SlabRule("tumour", 1).bounds(brain, tumour) == (3, 7)
    assert SlabRule("tumour", 0).bounds(brain, tumour) == (4, 6)
    assert SlabRule("range", 1, (5, -2)).bounds(brain, tumour) == (4, 10)  # 5..8 inclusive
    # Nothing to select: the patient keeps its brain slices rather than an empty slab.
    assert SlabRule("tumour", 0).bounds(brain, np.zeros(10)) == (2, 8)
    assert SlabRule("tumour", 0).bounds(brain, None) == (2, 8)
    assert SlabRule("range", 0, (12, 20)).bounds(brain, tumour) == (2, 8)
    with pytest.raises(ValueError):
        SlabRule("range", 0)


@pytest.fixture(scope="module")
def caches(tiny_cohort_master, tmp_path_factory):
    """The tiny cohort cached for a tumour run (margin 1) and for a brain run."""
    cache_dir = tmp_path_factory.mktemp("slab-cache")

    def ready(**overrides):
        dm = make_datamodule(tiny_cohort_master, cache_dir, batch_size=64, **overrides)
        dm.prepare_data()
        dm.setup()
        return dm

    return ready(slices={"strategy": "tumor_all"}, slab_margin=1), ready(slices={"strategy": "brain"})


def test_a_tumour_run_stores_its_tumour_slices_and_margin_only(caches):
    tumour, brain = caches
    lean, whole = tumour.cached, brain.cached
    assert lean.directory != whole.directory  # the slab is part of the key
    assert lean.layout.slab == "tumour" and whole.layout.slab == "brain"
    depth = lean.layout.grid[0]
    for position in range(len(lean.patient_ids)):
        slot = lean.slots[position]
        inside = np.flatnonzero(lean.tumour_area["axial"][position])
        start, stop = max(inside[0] - 1, 0), min(inside[-1] + 2, depth)
        assert (lean.layout.origin[slot, 0], lean.layout.depth[slot]) == (start, stop - start)
    assert lean.layout.rows < 0.8 * whole.layout.rows
    assert lean.volumes_path.stat().st_size < 0.8 * whole.volumes_path.stat().st_size
    meta = json.loads((lean.directory / "meta.json").read_text())
    assert meta["slab"] == {"kind": "tumour", "margin": 1, "z_range": None}


def test_batches_from_the_slab_equal_the_brain_caches(caches):
    tumour, brain = caches
    for loader in (tumour.train_dataloader(), tumour.val_dataloader(), tumour.test_dataloader()):
        for batch in loader:
            want = _read(brain, batch)
            assert torch.equal(batch["image"].view(torch.int16), want.view(torch.int16))
            assert torch.count_nonzero(batch["image"]) > 0


def _read(dm, batch) -> torch.Tensor:
    """The same slices read from ``dm``'s cache."""
    from gliograde.data.batches.dataset import SliceDataset

    positions = np.array([dm.cached.position(p) for p in batch["patient_id"]])
    dataset = SliceDataset(
        volumes_path=dm.cached.volumes_path,
        layout=dm.cached.layout,
        slots=dm.cached.slots[positions],
        patient_positions=positions,
        slice_indices=batch["slice_index"].numpy(),
        labels=batch["label"].numpy(),
        patient_ids=dm.cached.patient_ids,
        modalities=dm.modalities,
        dtype=batch["image"].dtype,
    )
    return dataset.batch(list(range(len(positions))))["image"]


def test_a_slice_outside_the_slab_is_refused_never_zeros(caches):
    tumour, brain = caches
    dataset = tumour.train_dataloader().dataset
    position = int(dataset.patient_positions[0])
    slot = tumour.cached.slots[position]
    below = int(tumour.cached.layout.origin[slot, 0]) - 1
    same = brain.cached.position(tumour.cached.patient_ids[position])
    brain_area = brain.cached.brain_area_of(brain.modalities, "axial")
    assert below >= 0 and brain_area[same, below] > 0  # brain there, not stored
    dataset.slice_indices = dataset.slice_indices.copy()
    dataset.slice_indices[0] = below
    with pytest.raises(ValueError, match="outside the tumour slab"):
        dataset.batch([0])
    volume = tumour.cached.volume(position)
    assert isinstance(volume, np.ma.MaskedArray) and volume.mask[below].all()
    assert np.isnan(volume.data[below]).all()
    whole = brain.cached.volume(same)
    held = slice(below + 1, below + 1 + int(tumour.cached.layout.depth[slot]))
    np.testing.assert_array_equal(volume[held].data, whole[held])


def test_a_brain_cache_serves_a_tumour_run_but_not_the_reverse(tiny_cohort_master, tmp_path):
    first = make_datamodule(tiny_cohort_master, tmp_path / "a", slices={"strategy": "tumor_topk"})
    first.prepare_data()
    then = make_datamodule(tiny_cohort_master, tmp_path / "a", slices={"strategy": "brain"})
    then.prepare_data()
    assert first.cached.layout.slab == "tumour" and then.cached.directory != first.cached.directory
    again = make_datamodule(tiny_cohort_master, tmp_path / "a", slices={"strategy": "tumor_topk", "k": 2})
    again.prepare_data()
    assert again.cached.directory == first.cached.directory  # its own cache first
    other = make_datamodule(tiny_cohort_master, tmp_path / "b", slices={"strategy": "brain"})
    other.prepare_data()
    reuse = make_datamodule(tiny_cohort_master, tmp_path / "b", slices={"strategy": "tumor_topk"})
    reuse.prepare_data()
    assert reuse.cached.directory == other.cached.directory
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if p.is_dir()) == [other.cached.directory.name]


def test_slab_margin_is_checked_and_keyed(tiny_cohort_master, tmp_path):
    with pytest.raises(ConfigError, match="data.slab_margin=-1"):
        make_datamodule(tiny_cohort_master, tmp_path, slab_margin=-1)
    wide = make_datamodule(tiny_cohort_master, tmp_path, slices={"strategy": "tumor_all"}, slab_margin=3)
    wide.prepare_data()
    narrow = make_datamodule(tiny_cohort_master, tmp_path, slices={"strategy": "tumor_all"}, slab_margin=0)
    narrow.prepare_data()
    assert wide.cached.directory != narrow.cached.directory
    assert wide.cached.layout.rows > narrow.cached.layout.rows


def test_the_current_key_is_the_brain_cache_a_tumour_run_reads(tiny_cohort_master, tmp_path):
    records = discover_cohort(tiny_cohort_master, LayoutSpec(), LabelSpec(), True).patients
    args = (records, tmp_path, PreprocessSpec(workers=1), LayoutSpec().mask_labels)
    own = current_key(*args, SlabRule("tumour"))
    assert own == cache_key(*args[:1], *args[2:], slab=SlabRule("tumour"))  # nothing built yet
    brain = make_datamodule(tiny_cohort_master, tmp_path, slices={"strategy": "brain"})
    brain.prepare_data()
    assert current_key(*args, SlabRule("tumour")) == brain.cached.directory.name != own

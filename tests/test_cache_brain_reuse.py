"""A brain-slab cache serves every run on the same inputs: its margin is not in its key, and
tumour runs (with any context) and range runs read it rather than decoding again."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.cohorts import make_datamodule

import gliograde.data.caching.build as build_module
import gliograde.data.caching.cache as cache_module
from gliograde.data.caching.cache_box import SLAB_MARGIN, SlabRule

RUNS = (
    dict(slices={"strategy": "tumor_all"}, context=SLAB_MARGIN + 2),  # a tumour slab wider than the default
    dict(slices={"strategy": "range", "z_min": 3, "z_max": -4}),
    dict(slices={"strategy": "range", "z_min": 0, "z_max": -1}, context=1),  # slices outside the brain
    dict(slices={"strategy": "brain"}, slab_margin=SLAB_MARGIN + 3),
    dict(slices={"strategy": "middle", "n": 3}, context=SLAB_MARGIN + 1),
)


def _ready(root, cache_dir, **options):
    dm = make_datamodule(root, cache_dir, split=None, transfer_dtype="float32", **options)
    dm.prepare_data()
    dm.setup()
    return dm


def _images(dm) -> tuple[list, np.ndarray]:
    batch = dm.datasets["all"].batch(list(range(len(dm.datasets["all"]))))
    keys = list(zip(batch["patient_id"], batch["slice_index"].tolist()))
    return keys, batch["image"].numpy()


@pytest.mark.slow  # a few seconds: kept out of the fast suite's 90 s
def test_a_brain_cache_serves_wider_margins_tumour_and_range_runs(tiny_cohort_master, tmp_path, monkeypatch):
    own = [_images(_ready(tiny_cohort_master, tmp_path / f"own{i}", **run)) for i, run in enumerate(RUNS)]
    brain = _ready(tiny_cohort_master, tmp_path / "cache", slices={"strategy": "brain"})

    def fail(*args, **kwargs):
        raise AssertionError("NIfTI decoded although a brain cache of the same inputs exists")

    monkeypatch.setattr(build_module, "preprocess_patient", fail)
    monkeypatch.setattr(build_module, "read_header", fail)
    monkeypatch.setattr(cache_module, "read_header", fail)
    for run, (keys, images) in zip(RUNS, own):
        reused = _ready(tiny_cohort_master, tmp_path / "cache", **run)
        assert reused.cached.directory == brain.cached.directory, run
        got_keys, got = _images(reused)
        assert got_keys == keys
        np.testing.assert_array_equal(got, images)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [brain.cached.directory.name]


def test_a_brain_slabs_key_leaves_out_its_margin_other_slabs_keep_theirs():
    assert SlabRule("brain", 0).settings() == SlabRule("brain", 7).settings()
    assert SlabRule("tumour", 0).settings() != SlabRule("tumour", 7).settings()
    assert SlabRule("range", 1, (2, 5)).covering() == [SlabRule("brain", 1)]
    assert SlabRule("brain").covering() == []

"""A damaged file of a modality the run does not use never fails the run or drops its patient:
the extra modality is left out of the cache for every patient, in one warning line."""

from __future__ import annotations

import logging

import pytest
from helpers.cohorts import make_datamodule, patient_file

import gliograde.data.caching.build as build_module
from gliograde.data.caching.cache import current_key
from gliograde.data.discovery.cohort import discover_cohort
from gliograde.data.errors import DataError
from gliograde.data.pipeline.prepared import slab_rule
from gliograde.data.discovery.specs import LabelSpec, LayoutSpec

FIRST = "BraTS20_Training_005"


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _ready(root, cache_dir, **options):
    dm = make_datamodule(root, cache_dir, slices={"strategy": "brain"}, **options)
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_truncated_optional_t2_is_left_out_for_every_patient(tiny_cohort, tmp_path, caplog, on_error):
    _truncate(patient_file(tiny_cohort, FIRST, "t2"))
    with caplog.at_level(logging.WARNING):
        dm = _ready(tiny_cohort, tmp_path / "cache", modalities=["flair"], on_error=on_error)
    assert dm.cached.modalities == ("flair", "t1", "t1ce")
    assert len(dm.cached.patient_ids) == 24 and FIRST in dm.cached.patient_ids
    assert dm.skipped == [] and not dm.cached.problems
    said = [r.getMessage() for r in caplog.records if "out of the cache" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0]
    assert said[0].startswith("Leaving t2 out of the cache for every patient (the run does not use it)")
    assert f"{FIRST}_t2.nii" in said[0] and "truncated" in said[0]


def test_the_reduced_cache_is_reused_and_is_the_current_one(tiny_cohort, tmp_path, monkeypatch):
    _truncate(patient_file(tiny_cohort, FIRST, "t2"))
    first = _ready(tiny_cohort, tmp_path / "cache", modalities=["flair"])
    monkeypatch.setattr(build_module, "preprocess_patient", _no_decoding)
    again = _ready(tiny_cohort, tmp_path / "cache", modalities=["t1", "flair"])
    assert again.cached.directory == first.cached.directory
    records = discover_cohort(tiny_cohort, LayoutSpec(), LabelSpec(), True, ("flair",)).patients
    opts = first.prepared.options
    key = current_key(
        records, opts.cache_dir, opts.preprocess_spec, opts.layout.mask_labels, slab_rule(opts), ("flair",)
    )
    assert key == first.cached.directory.name


def test_a_broken_requested_modality_keeps_todays_error(tiny_cohort, tmp_path):
    _truncate(patient_file(tiny_cohort, FIRST, "t2"))
    with pytest.raises(DataError, match="truncated NIfTI") as caught:
        _ready(tiny_cohort, tmp_path / "cache", modalities=["flair", "t2"])
    assert caught.value.patient == FIRST and str(caught.value.where).endswith(f"{FIRST}_t2.nii")
    skipping = _ready(tiny_cohort, tmp_path / "cache", modalities=["flair", "t2"], on_error="skip")
    assert skipping.cached.modalities == ("flair", "t1", "t1ce", "t2")
    assert FIRST not in skipping.cached.patient_ids and [e.patient for e in skipping.skipped] == [FIRST]


def _no_decoding(*args, **kwargs):
    raise AssertionError("NIfTI decoded although the cache exists")

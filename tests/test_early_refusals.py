"""Mistakes that used to fail late (after an epoch, or by exhausting the memory) are found
first; harmless ones are warnings, not errors."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
from helpers.cohorts import make_datamodule, patient_file
from helpers.configs import compose_config

from gliograde.config.compose import check_command_line
from gliograde.data.caching.cache_clean import Removed
from gliograde.errors import ConfigError
from gliograde.prepare import format_clean
from gliograde.config.schema import validate_config


def test_a_training_without_test_patients_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError) as err:
        check_command_line(
            "train", ["data.split.train=0.85", "data.split.test=0", f"data.cache_dir={tmp_path}"]
        )
    message = str(err.value)
    assert "\n" not in message and "data.split.test=0" in message and "test=false" in message
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    cfg = compose_config("train", ["data.split.test=0", "data.split.train=0.85", "test=false"])
    validate_config(cfg, "train", deep=False)  # skipping the test stage is allowed


def test_a_context_deeper_than_the_volume_is_refused_before_the_cache(tiny_cohort, tmp_path):
    cache_dir = tmp_path / "cache"
    dm = make_datamodule(tiny_cohort, cache_dir, context=1000)
    with pytest.raises(ConfigError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "\n" not in message and "data.context=1000" in message
    assert "hold 20 axial slices" in message and "at most 9" in message
    assert not cache_dir.exists()
    coronal_slices = {"strategy": "brain", "plane": "coronal"}
    coronal = make_datamodule(tiny_cohort, cache_dir, context=20, slices=coronal_slices)
    with pytest.raises(ConfigError, match="hold 40 coronal slices"):
        coronal.prepare_data()
    make_datamodule(tiny_cohort, cache_dir, context=9).prepare_data()  # 19 of 20 slices


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_crops_larger_than_the_slice_or_smaller_than_the_brain_are_warned(tiny_cohort, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    slices = {"strategy": "brain"}
    with caplog.at_level(logging.WARNING):
        make_datamodule(tiny_cohort, cache_dir, slices=slices, crop={"mode": "tumor", "size": 48}).setup()
    (line,) = [w for w in _warnings(caplog) if "data.crop" in w]
    assert "data.crop.size=48 is larger than the 40x40 axial slice" in line and "at most 40" in line

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dm = make_datamodule(tiny_cohort, cache_dir, slices=slices, crop={"mode": "brain", "size": 8})
        dm.setup()
    (line,) = [w for w in _warnings(caplog) if "data.crop" in w]
    boxes = dm.cached.brain_boxes_of(dm.modalities, "axial")
    inside = [b[b[:, 0] >= 0] for b in boxes]
    widest = max(
        max(int(b[:, 1].max() - b[:, 0].min() + 1), int(b[:, 3].max() - b[:, 2].min() + 1)) for b in inside
    )
    assert "data.crop.size=8 is smaller than the brain of patient" in line
    assert f"data.crop.size={widest} or more" in line

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_datamodule(tiny_cohort, cache_dir, slices=slices, crop={"mode": "brain", "size": widest}).setup()
    assert not [w for w in _warnings(caplog) if "data.crop" in w]


def _empty_mask(root, pid: str) -> None:
    path = patient_file(root, pid, "seg")
    img = nib.load(str(path))
    data, affine = np.zeros(img.shape, dtype=img.get_data_dtype()), np.array(img.affine)
    del img
    path.unlink()
    nib.Nifti1Image(data, affine).to_filename(str(path))


@pytest.mark.parametrize(
    "slices",
    [{"strategy": "brain"}, {"strategy": "middle", "n": 3}, {"strategy": "range", "z_min": 5, "z_max": 14}],
)
def test_an_empty_mask_is_no_error_where_the_strategy_needs_none(tiny_cohort, tmp_path, caplog, slices):
    pid = "BraTS20_Training_004"
    _empty_mask(tiny_cohort, pid)
    with caplog.at_level(logging.WARNING):
        crop = {"mode": "tumor", "size": 16}
        dm = make_datamodule(tiny_cohort, tmp_path / "cache", slices=slices, crop=crop)
        dm.setup()
    assert dm.skipped == [] and pid in dm.assignment
    assert any(pid in w and "empty tumour mask" in w for w in _warnings(caplog))
    assert dm.crop_rules[pid] == "tumor (no mask: brain centre)"
    batch = dm.datasets[dm.assignment[pid]].batch([0])
    assert batch["image"].shape[-2:] == (16, 16)


SUPERSEDED = "superseded cache"


def test_clean_lists_a_superseded_cache_in_use_as_kept(tmp_path):
    text = format_clean(
        tmp_path / "now",
        [
            Removed(tmp_path / "old", "superseded cache", 2_000_000_000),
            Removed(tmp_path / "read", f"{SUPERSEDED}, kept: another process reads it", 10**9, in_use=True),
        ],
    )
    assert f"removed       {tmp_path / 'old'} (superseded cache, 2.00 GB)" in text
    kept = f"kept          {tmp_path / 'read'} ({SUPERSEDED}, kept: another process reads it, 1.00 GB)"
    assert kept in text
    assert "freed         2000000000 bytes (2.00 GB) in 1 folder(s)" in text

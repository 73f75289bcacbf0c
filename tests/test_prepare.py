"""`python -m gliograde.prepare` on a Kaggle-layout tree, and its one-line errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.cohorts import make_datamodule
from helpers.commands import run_python

from gliograde.data.caching.cache_clean import key_lock, tree_bytes


def _prepare(*overrides: str) -> subprocess.CompletedProcess:
    return run_python("-m", "gliograde.prepare", *overrides, timeout=300)


@pytest.fixture
def kaggle_tree(tiny_cohort_master, tmp_path) -> Path:
    """The Kaggle zip's nesting, archive debris, and case 355's odd mask name."""
    top = tmp_path / "archive"
    inner = top / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    shutil.copytree(tiny_cohort_master, inner)
    (top / "__MACOSX" / "BraTS2020_TrainingData").mkdir(parents=True)
    (top / ".DS_Store").write_bytes(b"\0\0")
    (inner / "survival_info.csv").write_text("Brats20ID,Age\n")
    (inner / "README.txt").write_text("read me\n")
    odd = inner / "BraTS20_Training_003"
    (odd / "BraTS20_Training_003_seg.nii").rename(odd / "W39_1998.09.19_Segm.nii")
    return top


@pytest.mark.slow
def test_prepare_on_kaggle_layout(kaggle_tree, tmp_path):
    result = _prepare(
        "data=brats2020",
        f"data.root={kaggle_tree}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.preprocess.workers=2",
        "data.progress=false",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "patients      24 (HGG: 16, LGG: 8)" in out
    assert "masks found   24" in out
    assert "skipped       0" in out
    assert "MICCAI_BraTS2020_TrainingData" in out
    assert "W39_1998.09.19_Segm.nii" in result.stdout + result.stderr  # the mask fallback is announced
    cache = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(cache) == 1 and (cache[0] / "cohort.csv").exists()
    assert "W39_1998.09.19_Segm.nii" in (cache[0] / "cohort.csv").read_text()


@pytest.mark.slow
def test_prepare_reports_bad_root_in_one_line(tmp_path):
    result = _prepare(
        "data=brats2020", f"data.root={tmp_path / 'nowhere'}", f"data.cache_dir={tmp_path / 'c'}"
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0]
    assert "nowhere" in lines[0]


@pytest.mark.slow
def test_prepare_requires_a_root_for_real_presets(tmp_path):
    result = _prepare("data=brats2021", f"data.cache_dir={tmp_path / 'c'}")
    assert result.returncode == 2
    assert "data.root" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # a few seconds: kept out of the fast suite's 90 s
def test_clean_removes_superseded_caches_and_abandoned_builds_only(tiny_cohort, tiny_cohort_master, tmp_path):
    cache_dir = tmp_path / "cache"
    old = make_datamodule(tiny_cohort, cache_dir)
    old.prepare_data()
    patient = tiny_cohort / "BraTS20_Training_005" / "BraTS20_Training_005_t2.nii"
    patient.write_bytes(patient.read_bytes())  # rewritten in place: the old cache is superseded
    current = make_datamodule(tiny_cohort, cache_dir)
    current.prepare_data()
    other_root = tmp_path / "other"
    shutil.copytree(tiny_cohort_master, other_root)
    other = make_datamodule(other_root, cache_dir)
    other.prepare_data()
    abandoned = cache_dir / ".deadbeef00.partial-00000001"
    abandoned.mkdir()
    (abandoned / "volumes.npy").write_bytes(b"\0" * 1000)
    building = cache_dir / ".feedface00.partial-00000002"
    building.mkdir()
    expected_bytes = tree_bytes(old.cached.directory) + 1000
    old.cached.hold.release()  # this process no longer reads the old cache

    with key_lock(cache_dir, "feedface00"):  # another process is building that key
        result = _prepare(
            "data=brats2020", f"data.root={tiny_cohort}", f"data.cache_dir={cache_dir}", "clean=true"
        )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"removed       {old.cached.directory} (superseded cache" in out
    assert f"removed       {abandoned} (abandoned partial build" in out
    assert f"freed         {expected_bytes} bytes" in out and "in 2 folder(s)" in out
    assert f"current cache {current.cached.directory} (kept)" in out
    remaining = sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock"))
    assert remaining == sorted([building.name, current.cached.directory.name, other.cached.directory.name])

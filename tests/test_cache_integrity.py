"""Cache integrity: verified on open, rebuilt or refused when damaged, stale inputs detected,
read-only caches usable, a builder's own abandoned partial build removed, voxel fingerprints."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.cohorts import make_datamodule, patient_file

import gliograde.data.caching.cache as cache_module
import gliograde.data.caching.cache_meta as cache_meta_module
from gliograde.data.caching.cache import open_or_build
from gliograde.data.caching.reader import CachedCohort
from gliograde.data.caching.key import cache_key
from gliograde.data.caching.cache_meta import CACHE_FORMAT, DamagedCacheError
from gliograde.data.discovery.cohort import discover_cohort
from gliograde.data.caching.preprocess import voxel_fingerprint
from gliograde.data.discovery.specs import MODALITIES, LabelSpec, LayoutSpec, PreprocessSpec


def _built(root: Path, cache_dir: Path) -> CachedCohort:
    """The cache open_or_build's defaults (the brain slab) name."""
    dm = make_datamodule(root, cache_dir, slices={"strategy": "brain"})
    dm.prepare_data()
    return dm.cached


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")
    }


def test_in_place_rewrite_with_restored_mtime_is_not_served_stale(tiny_cohort, tmp_path):
    first = _built(tiny_cohort, tmp_path / "cache")
    pid = "BraTS20_Training_005"
    path = patient_file(tiny_cohort, pid, "t2")
    before = path.stat()
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[data != 0] += 7  # same size, same header, other voxels
    with open(path, "r+b") as fh:  # rewritten in place: same inode
        fh.seek(int(img.dataobj.offset))
        fh.write(data.tobytes(order="F"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    for name in ("st_size", "st_mtime_ns", "st_ino"):
        assert getattr(after, name) == getattr(before, name)

    second = _built(tiny_cohort, tmp_path / "cache")
    assert second.directory != first.directory
    position = second.position(pid)
    assert second.fingerprints["t2"][position] != first.fingerprints["t2"][position]
    assert second.fingerprints["t2"][position] == voxel_fingerprint(data)


@pytest.mark.parametrize("damage", ["truncate_volumes", "flip_index_byte", "edit_meta", "drop_problems"])
def test_a_damaged_cache_is_named_and_rebuilt(tiny_cohort, tmp_path, caplog, damage):
    first = _built(tiny_cohort, tmp_path / "cache")
    expected = np.load(first.volumes_path)
    name = {
        "truncate_volumes": "volumes.npy",
        "flip_index_byte": "index.npz",
        "edit_meta": "meta.json",
        "drop_problems": "problems.csv",
    }[damage]
    target = first.directory / name
    if damage == "truncate_volumes":
        os.truncate(target, target.stat().st_size // 2)
    elif damage == "flip_index_byte":
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "edit_meta":
        meta = json.loads(target.read_text())
        meta["files"]["volumes.npy"]["bytes"] += 2
        target.write_text(json.dumps(meta))
    else:
        target.unlink()

    with pytest.raises(DamagedCacheError, match=name):
        CachedCohort.load(first.directory)
    with caplog.at_level(logging.WARNING, logger="gliograde.data.caching.cache"):
        again = _built(tiny_cohort, tmp_path / "cache")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(target) in w and "rebuilding" in w for w in warnings), warnings
    assert again.directory == first.directory
    np.testing.assert_array_equal(np.load(again.volumes_path), expected)
    assert not [p for p in (tmp_path / "cache").iterdir() if ".partial-" in p.name]


def test_a_complete_cache_opens_from_a_read_only_directory(tiny_cohort, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    built = _built(tiny_cohort, cache_dir)
    records = discover_cohort(tiny_cohort, LayoutSpec(), LabelSpec(), True).patients
    before = _snapshot(cache_dir)
    for path in [cache_dir, *cache_dir.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        # root ignores the permission bits: the snapshot proves nothing (no lock) was written.
        monkeypatch.setattr(cache_module, "_make_writable_dir", _refuse_writes)
        if os.geteuid() == 0:  # chmod changed volumes.npy's ctime: a full check, not recorded here
            monkeypatch.setattr(cache_meta_module, "may_record", lambda directory: False)
        cached = open_or_build(
            records, cache_dir, PreprocessSpec(workers=1), LayoutSpec().mask_labels, progress=False
        )
        assert cached.directory == built.directory
        assert _snapshot(cache_dir) == before

        built.volumes_path.chmod(0o644)
        os.truncate(built.volumes_path, 1000)
        built.volumes_path.chmod(0o444)
        if os.geteuid() == 0:  # root may write anywhere; report the directory as a user sees it
            monkeypatch.setattr(cache_module, "_is_writable", lambda directory: False)
        with pytest.raises(DamagedCacheError) as err:
            open_or_build(
                records, cache_dir, PreprocessSpec(workers=1), LayoutSpec().mask_labels, progress=False
            )
        message = str(err.value)
        assert "\n" not in message and str(built.volumes_path) in message
        assert "1000 bytes" in message and "data.cache_dir" in message
    finally:
        for path in [cache_dir, *cache_dir.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _refuse_writes(cache_dir: Path) -> None:
    raise AssertionError(f"a complete cache needs no writable {cache_dir}")


def test_a_rerun_removes_its_own_abandoned_partial_build(tiny_cohort, tmp_path):
    cache_dir = tmp_path / "cache"
    records = discover_cohort(tiny_cohort, LayoutSpec(), LabelSpec(), True).patients
    key = cache_key(records, PreprocessSpec(), LayoutSpec().mask_labels)
    partial = cache_dir / f".{key}.partial-0badc0de"
    partial.mkdir(parents=True)
    (partial / "volumes.npy").write_bytes(b"\0" * 4096)
    cached = _built(tiny_cohort, cache_dir)
    assert cached.directory.name == key
    assert sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")) == [key]


def test_meta_records_the_cohort_root_and_format(tiny_cohort, tmp_path):
    cached = _built(tiny_cohort, tmp_path / "cache")
    meta = json.loads((cached.directory / "meta.json").read_text())
    assert meta["format"] == CACHE_FORMAT == 8
    assert meta["cohort_root"] == str(tiny_cohort)
    assert meta["modalities"] == ["flair", "t1", "t1ce", "t2"]
    assert meta["files"]["volumes.npy"]["bytes"] == cached.volumes_path.stat().st_size


def _clone_patient(root: Path, source: str, new: str, suffix: str = ".nii") -> Path:
    """Copy ``source`` under the id ``new`` (files renamed, optionally re-saved as .nii.gz)."""
    folder = root / new
    folder.mkdir()
    for part in (*MODALITIES, "seg"):
        src = patient_file(root, source, part)
        dst = folder / f"{new}_{part}{suffix}"
        if suffix == ".nii":
            shutil.copy2(src, dst)
        else:
            nib.save(nib.load(src), dst)
    mapping = root / "name_mapping.csv"
    rows = mapping.read_text().splitlines()
    row = next(r for r in rows if r.endswith("," + source))
    mapping.write_text("\n".join([*rows, row[: -len(source)] + new]) + "\n")
    return folder


def test_fingerprints_follow_voxel_content_not_files(tiny_cohort, tmp_path):
    _clone_patient(tiny_cohort, "BraTS20_Training_001", "BraTS20_Training_901")
    gz = _clone_patient(tiny_cohort, "BraTS20_Training_002", "BraTS20_Training_902", suffix=".nii.gz")
    assert (gz / "BraTS20_Training_902_t1.nii.gz").read_bytes()[:2] == b"\x1f\x8b"
    changed = _clone_patient(tiny_cohort, "BraTS20_Training_004", "BraTS20_Training_904")
    t1 = changed / "BraTS20_Training_904_t1.nii"
    img = nib.load(t1)
    data = np.asarray(img.dataobj).copy()
    data[20, 20, 10] += 1
    nib.save(nib.Nifti1Image(data, img.affine, img.header), t1)
    linked = tmp_path / "linked"
    linked.mkdir()
    shutil.copy2(tiny_cohort / "name_mapping.csv", linked / "name_mapping.csv")
    (linked / "BraTS20_Training_003").symlink_to(tiny_cohort / "BraTS20_Training_003")

    cached = _built(tiny_cohort, tmp_path / "cache")
    via_link = open_or_build(
        discover_cohort(linked, LayoutSpec(), LabelSpec(), True).patients,
        tmp_path / "cache",
        PreprocessSpec(workers=1),
        LayoutSpec().mask_labels,
        progress=False,
    )

    def prints(cohort: CachedCohort, pid: str) -> tuple[tuple[str, ...], str]:
        position = cohort.position(pid)
        per_modality = tuple(cohort.fingerprints[m][position] for m in MODALITIES)
        return per_modality, cohort.patient_fingerprint(position)

    assert set(cached.fingerprints) == set(MODALITIES)
    assert all(len(v) == len(cached.patient_ids) for v in cached.fingerprints.values())
    assert prints(cached, "BraTS20_Training_901") == prints(cached, "BraTS20_Training_001")
    assert prints(cached, "BraTS20_Training_902") == prints(cached, "BraTS20_Training_002")
    assert prints(via_link, "BraTS20_Training_003") == prints(cached, "BraTS20_Training_003")
    original, changed_prints = prints(cached, "BraTS20_Training_004"), prints(cached, "BraTS20_Training_904")
    t1_index = MODALITIES.index("t1")
    for index, (a, b) in enumerate(zip(original[0], changed_prints[0])):
        assert (a == b) == (index != t1_index)
    assert original[1] != changed_prints[1]
    distinct = {cached.patient_fingerprint(i) for i in range(len(cached.patient_ids))}
    assert len(cached.patient_ids) == 27 and len(distinct) == 25  # 901 and 902 repeat 001 and 002
    t2 = nib.load(patient_file(tiny_cohort, "BraTS20_Training_001", "t2"))
    expected = voxel_fingerprint(np.asarray(t2.dataobj))
    assert prints(cached, "BraTS20_Training_001")[0][MODALITIES.index("t2")] == expected


def test_voxel_fingerprint_depends_on_values_and_shape_only():
    values = np.random.default_rng(0).integers(-5, 3000, (7, 6, 5)).astype(np.int16)
    digest = voxel_fingerprint(values)
    assert digest == voxel_fingerprint(values.astype(np.float32))
    assert digest == voxel_fingerprint(np.asfortranarray(values.astype(np.int32)))
    assert digest != voxel_fingerprint(values.reshape(5, 6, 7))
    fractional = values.astype(np.float32)
    fractional[0, 0, 0] += 0.5
    assert voxel_fingerprint(fractional) != digest
    wide = values.astype(np.int32)
    wide[0, 0, 0] = 40000  # beyond int16: hashed as float32, still by value
    assert voxel_fingerprint(wide) == voxel_fingerprint(wide.astype(np.float64)) != digest


def test_fingerprints_do_not_depend_on_preprocessing_settings(tiny_cohort, tmp_path):
    plain = _built(tiny_cohort, tmp_path / "cache")
    settings = {"workers": 1, "reorient": "ASR", "clip_percentiles": (1, 99)}
    dm = make_datamodule(tiny_cohort, tmp_path / "cache", preprocess=settings)
    dm.prepare_data()
    assert dm.cached.directory != plain.directory
    assert dm.cached.patient_ids == plain.patient_ids and dm.cached.fingerprints == plain.fingerprints

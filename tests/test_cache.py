"""Cache: normalisation, reuse without decoding, keying, atomic and concurrent builds."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.cohorts import make_datamodule, patient_file

import gliograde.data.caching.build as build_module
import gliograde.data.caching.cache as cache_module
from gliograde.data.caching.reader import CachedCohort
from gliograde.data.errors import DataError
from gliograde.data.discovery.specs import MODALITIES


def _entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock"))


def test_cache_holds_zscored_modalities_with_zero_background(tiny_cohort, tmp_path):
    dm = make_datamodule(tiny_cohort, tmp_path / "cache", slices={"strategy": "brain"})  # every brain slice
    dm.prepare_data()
    cached = dm.cached
    x, y, z = cached.shape
    volume = cached.volume(0)
    assert volume.shape == (z, len(MODALITIES), y, x)
    assert volume.dtype == np.float16
    pid = cached.patient_ids[0]
    for channel, modality in enumerate(MODALITIES):
        raw = np.asarray(nib.load(patient_file(tiny_cohort, pid, modality)).dataobj).T  # (z, y, x)
        got = volume[:, channel].astype(np.float32)
        brain = raw != 0
        assert np.all(got[~brain] == 0)
        assert abs(got[brain].mean()) < 0.01
        assert abs(got[brain].std() - 1) < 0.01
        expected = (raw[brain] - raw[brain].mean()) / raw[brain].std()
        np.testing.assert_allclose(got[brain], expected, atol=0.01, rtol=0.002)


def test_clipping_changes_the_key_and_bounds_the_values(tiny_cohort, tmp_path):
    plain = make_datamodule(tiny_cohort, tmp_path / "cache")
    plain.prepare_data()
    clipped = make_datamodule(
        tiny_cohort, tmp_path / "cache", preprocess={"workers": 1, "clip_percentiles": (5, 95)}
    )
    clipped.prepare_data()
    assert plain.cached.directory != clipped.cached.directory
    a = np.load(plain.cached.volumes_path, mmap_mode="r")
    b = np.load(clipped.cached.volumes_path, mmap_mode="r")
    assert np.abs(b).max() < np.abs(a).max()


def test_second_setup_decodes_no_nifti(tiny_cohort, tmp_path, monkeypatch):
    first = make_datamodule(tiny_cohort, tmp_path / "cache", slices={"strategy": "brain"})
    first.prepare_data()
    first.setup()

    def fail(*args, **kwargs):
        raise AssertionError("NIfTI decoded although the cache exists")

    monkeypatch.setattr(build_module, "preprocess_patient", fail)
    monkeypatch.setattr(build_module, "read_header", fail)
    monkeypatch.setattr(cache_module, "read_header", fail)
    # Other modalities, strategies and planes whose slices the brain slab holds reuse its cache.
    others = ({"strategy": "brain", "plane": "coronal"}, {"strategy": "tumor_all"}, {"strategy": "middle"})
    for slices in others:
        second = make_datamodule(tiny_cohort, tmp_path / "cache", modalities=["t2", "flair"], slices=slices)
        second.prepare_data()
        second.setup()
        assert second.cached.directory == first.cached.directory
        batch = next(iter(second.train_dataloader()))
        assert batch["image"].shape[1] == 2


def test_touching_an_input_file_rebuilds(tiny_cohort, tmp_path):
    dm = make_datamodule(tiny_cohort, tmp_path / "cache")
    dm.prepare_data()
    path = patient_file(tiny_cohort, "BraTS20_Training_005", "t2")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = make_datamodule(tiny_cohort, tmp_path / "cache")
    again.prepare_data()
    assert again.cached.directory != dm.cached.directory


def test_parallel_build_equals_serial_build(tiny_cohort, tmp_path):
    serial = make_datamodule(tiny_cohort, tmp_path / "serial")
    serial.prepare_data()
    parallel = make_datamodule(tiny_cohort, tmp_path / "parallel", preprocess={"workers": 2})
    parallel.prepare_data()
    a = np.load(serial.cached.volumes_path)
    b = np.load(parallel.cached.volumes_path)
    np.testing.assert_array_equal(a, b)
    for plane in ("axial", "coronal", "sagittal"):
        np.testing.assert_array_equal(serial.cached.tumour_area[plane], parallel.cached.tumour_area[plane])


def test_interrupted_build_leaves_nothing_trusted(tiny_cohort, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = build_module.preprocess_patient

    def interrupt_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(build_module, "preprocess_patient", interrupt_third)
    cache_dir = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        make_datamodule(tiny_cohort, cache_dir).prepare_data()
    assert _entries(cache_dir) == []
    monkeypatch.setattr(build_module, "preprocess_patient", real)
    dm = make_datamodule(tiny_cohort, cache_dir)
    dm.prepare_data()
    assert len(dm.cached.patient_ids) == 24


def _build_in_process(root: str, cache_dir: str, start: float, queue) -> None:
    while time.time() < start:
        time.sleep(0.005)
    dm = make_datamodule(Path(root), Path(cache_dir))
    dm.prepare_data()
    queue.put(str(dm.cached.directory))


@pytest.mark.slow  # two spawned processes, started together on the clock
def test_two_concurrent_builds_end_with_one_good_cache(tiny_cohort, tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start = time.time() + 3.0  # both processes past their imports, then go together
    procs = [
        context.Process(
            target=_build_in_process, args=(str(tiny_cohort), str(tmp_path / "cache"), start, queue)
        )
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    directories = {queue.get(timeout=5), queue.get(timeout=5)}
    assert len(directories) == 1
    assert _entries(tmp_path / "cache") == [Path(directories.pop()).name]
    cached = CachedCohort.load(next(p for p in (tmp_path / "cache").iterdir() if p.is_dir()))
    assert len(cached.patient_ids) == 24
    assert np.isfinite(np.load(cached.volumes_path, mmap_mode="r")).all()


@pytest.mark.parametrize("codes", ["RAS", "ASR"])
def test_reorientation_to_axis_codes(tiny_cohort, tmp_path, codes):
    dm = make_datamodule(tiny_cohort, tmp_path / "cache", preprocess={"workers": 1, "reorient": codes})
    dm.prepare_data()
    pid = dm.cached.patient_ids[0]
    img = nib.load(patient_file(tiny_cohort, pid, "t2"))
    expected = (
        nib.as_closest_canonical(img)
        if codes == "RAS"
        else img.as_reoriented(
            nib.orientations.ornt_transform(
                nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(tuple(codes))
            )
        )
    )
    raw = np.asarray(expected.dataobj).T  # (z, y, x) of the reoriented volume
    assert dm.cached.shape == expected.shape
    got = dm.cached.volume(0)[:, MODALITIES.index("t2")]
    np.testing.assert_array_equal(got != 0, raw != 0)
    assert nib.aff2axcodes(expected.affine) == tuple(codes)


@pytest.mark.parametrize(
    "preprocess, message",
    [
        ({"clip_percentiles": [99.5, 0.5]}, "clip_percentiles"),
        ({"clip_percentiles": [1, 50, 99]}, "clip_percentiles"),
        ({"reorient": "XYZ"}, "reorient='XYZ'"),
        ({"reorient": "LLS"}, "reorient='LLS'"),
    ],
)
def test_bad_preprocess_settings_fail_at_once(tiny_cohort, tmp_path, preprocess, message):
    with pytest.raises(ValueError, match=message):
        make_datamodule(tiny_cohort, tmp_path / "cache", preprocess=preprocess)


def test_a_disk_too_small_is_refused_before_decoding(tiny_cohort, tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(build_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DataError, match=r"not enough free disk space for the cache: needs 0\.\d+ GB") as err:
        make_datamodule(tiny_cohort, tmp_path / "cache").prepare_data()
    assert "\n" not in str(err.value) and "data.cache_dir" in str(err.value)
    assert _entries(tmp_path / "cache") == []


def test_abandoned_partial_builds_are_removed(tiny_cohort, tmp_path):
    cache_dir = tmp_path / "cache"
    (cache_dir / ".0123abcd.partial-deadbeef").mkdir(parents=True)
    (cache_dir / ".0123abcd.partial-deadbeef" / "volumes.npy").write_bytes(b"\0" * 100)
    dm = make_datamodule(tiny_cohort, cache_dir)
    dm.prepare_data()
    assert _entries(cache_dir) == [dm.cached.directory.name]

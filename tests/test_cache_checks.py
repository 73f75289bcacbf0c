"""volumes.npy's blocks against their crc32: a full check by prepare and after any change to
the file, a sampled one on every other open; damage named and rebuilt, or refused read-only.
Caches held by a reader are never removed by clean, and clean supersedes by generation."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers.cohorts import make_datamodule
from helpers.commands import run_python
from helpers.runs import tiny_run

import gliograde.data.caching.cache as cache_module
from gliograde.data.caching.cache import current_cache
from gliograde.data.caching.cache_clean import clean_cache_dir, hold_for_reading
import gliograde.data.caching.cache_meta as cache_meta
from gliograde.data.caching.cache_meta import DamagedCacheError, read_meta, verify_cache
from gliograde.data.caching.reader import CachedCohort
from gliograde.data.discovery.cohort import discover_cohort
from gliograde.data.pipeline.options import DataOptions
from gliograde.data.pipeline.prepared import PreparedCohort, slab_rule
from gliograde.data.synthetic.generator import generate_cohort


@pytest.fixture(scope="module")
def small_master(tmp_path_factory) -> Path:
    """6 patients of 24x24x12: the checks need a few blocks, not many voxels."""
    root = tmp_path_factory.mktemp("checks") / "small"
    generate_cohort(root, patients=6, seed=11, shape=(24, 24, 12), lgg_fraction=1 / 3, compress=False)
    return root


@pytest.fixture
def small_cohort(small_master, tmp_path) -> Path:
    root = tmp_path / "cohort"
    shutil.copytree(small_master, root)
    return root


def _built(root: Path, cache_dir: Path, **overrides) -> CachedCohort:
    dm = make_datamodule(root, cache_dir, **({"slices": {"strategy": "brain"}} | overrides))
    dm.prepare_data()
    dm.cached.hold.release()  # the test process is not a reader of the caches it inspects
    return dm.cached


def _blocks(directory: Path) -> list[list]:
    return read_meta(directory)["files"]["volumes.npy"]["crc32_blocks"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _zero_in_place(path: Path, start: int, stop: int, keep_mtime: bool = True) -> None:
    """Overwrite bytes ``start:stop`` of ``path`` with zeros in place: same size, same inode,
    the mtime put back (the ctime cannot be)."""
    before = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(b"\0" * (stop - start))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_ino) == (before.st_size, before.st_ino)
    assert not keep_mtime or after.st_mtime_ns == before.st_mtime_ns


def _pretend_unchanged(directory: Path) -> None:
    """Make verified.json match volumes.npy as it is now: damage that leaves the stat alone
    (a failing disk, a raw write to the device)."""
    st = (directory / "volumes.npy").stat()
    stat = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    (directory / "verified.json").write_text(json.dumps({"volumes.npy": stat}))


def test_meta_holds_a_crc32_of_every_byte_of_volumes(small_cohort, tmp_path):
    cached = _built(small_cohort, tmp_path / "cache")
    blocks = _blocks(cached.directory)
    raw = cached.volumes_path.read_bytes()
    assert blocks[0][0] == 0 and blocks[0][3] == "header"
    assert [b[3] for b in blocks[1:]] == [cached.patient_ids[p] for p in np.argsort(cached.slots)]
    end = 0
    for offset, length, crc, _ in blocks:
        assert offset == end and zlib.crc32(raw[offset : offset + length]) == crc
        end += length
    assert end == len(raw)
    first, depth = cached.layout.first_row, cached.layout.depth
    row_bytes = np.load(cached.volumes_path, mmap_mode="r")[0].nbytes
    assert [b[1] for b in blocks[1:]] == [int(d) * row_bytes for d in depth[np.argsort(first)]]

    raw = bytearray(raw)
    raw[10] ^= 0x01  # inside the npy header: same size
    cached.volumes_path.write_bytes(bytes(raw))
    with pytest.raises(DamagedCacheError, match="array header"):
        verify_cache(cached.directory, "sample")


def test_zeroed_volumes_with_mtime_put_back_is_named_and_rebuilt(small_cohort, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    cached = _built(small_cohort, cache_dir)
    expected = np.load(cached.volumes_path)
    header = _blocks(cached.directory)[0][1]
    _zero_in_place(cached.volumes_path, header, cached.volumes_path.stat().st_size)

    with caplog.at_level(logging.WARNING, logger="gliograde.data.caching.cache"):
        again = _built(small_cohort, cache_dir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    first_patient = _blocks(cached.directory)[1][3]
    assert any(
        str(cached.volumes_path) in w and f"patient {first_patient}" in w and "rebuilding" in w
        for w in warnings
    ), warnings
    assert again.directory == cached.directory
    np.testing.assert_array_equal(np.load(again.volumes_path), expected)


def test_zeroed_volumes_in_a_read_only_cache_is_refused_in_one_line(small_cohort, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    cached = _built(small_cohort, cache_dir)
    _zero_in_place(cached.volumes_path, _blocks(cached.directory)[0][1], cached.volumes_path.stat().st_size)
    monkeypatch.setattr(cache_module, "_is_writable", lambda directory: False)
    with pytest.raises(DamagedCacheError) as err:
        _built(small_cohort, cache_dir)
    message = str(err.value)
    assert "\n" not in message and str(cached.volumes_path) in message
    assert "crc32" in message and "read-only" in message and "data.cache_dir" in message


def test_one_damaged_patient_is_found_by_a_full_check_whatever_the_stat(small_cohort, tmp_path):
    cached = _built(small_cohort, tmp_path / "cache")
    blocks = _blocks(cached.directory)
    offset, length, _, patient = blocks[len(blocks) // 2]
    _zero_in_place(cached.volumes_path, offset, offset + length)  # one patient's slices
    _pretend_unchanged(cached.directory)
    with pytest.raises(DamagedCacheError, match=f"patient {patient}'s stored slices"):
        verify_cache(cached.directory, "full")
    # prepare opens with a full check: it names the patient and rebuilds
    options = DataOptions(
        root=small_cohort, cache_dir=tmp_path / "cache", progress=False, preprocess={"workers": 1},
        slices={"strategy": "brain"},
    )
    prepared = PreparedCohort(options, check="full")
    prepared.load()
    verify_cache(prepared.cached.directory, "full")


def test_an_open_checks_every_block_only_after_the_file_changed(small_cohort, tmp_path, monkeypatch):
    cached = _built(small_cohort, tmp_path / "cache")
    blocks = _blocks(cached.directory)
    read: list[int] = []
    original = cache_meta.check_blocks
    def counted(path: Path, chosen: list) -> None:
        read.append(len(chosen))
        original(path, chosen)

    monkeypatch.setattr(cache_meta, "check_blocks", counted)

    verify_cache(cached.directory)  # the build recorded its own full check: a sample
    assert read == [1 + cache_meta.SAMPLED_BLOCKS]
    os.utime(cached.volumes_path)  # touched (the ctime too): a full check, then recorded
    verify_cache(cached.directory)
    verify_cache(cached.directory)
    assert read[1:] == [len(blocks), 1 + cache_meta.SAMPLED_BLOCKS]
    (cached.directory / "verified.json").write_text("{not json")
    verify_cache(cached.directory)
    assert read[-1] == len(blocks)


def test_a_sampled_check_catches_damage_the_stat_hides(small_cohort, tmp_path, monkeypatch):
    cached = _built(small_cohort, tmp_path / "cache")
    blocks = _blocks(cached.directory)
    _zero_in_place(cached.volumes_path, blocks[0][1], cached.volumes_path.stat().st_size)
    _pretend_unchanged(cached.directory)
    with pytest.raises(DamagedCacheError, match="stored slices"):
        verify_cache(cached.directory, "sample")
    # one damaged patient among many: a sample finds it when it draws it
    cached = _built(small_cohort, tmp_path / "cache")
    offset, length, _, patient = _blocks(cached.directory)[3]
    _zero_in_place(cached.volumes_path, offset, offset + length)
    _pretend_unchanged(cached.directory)
    monkeypatch.setattr(cache_meta, "SAMPLED_BLOCKS", len(blocks))
    with pytest.raises(DamagedCacheError, match=f"patient {patient}'s"):
        verify_cache(cached.directory, "sample")


# ------------------------------------------------------------------ readers and clean
def test_clean_keeps_a_superseded_cache_another_process_reads(small_cohort, tmp_path):
    cache_dir = tmp_path / "cache"
    old = _built(small_cohort, cache_dir)
    patient = small_cohort / "BraTS20_Training_002" / "BraTS20_Training_002_t2.nii"
    patient.write_bytes(patient.read_bytes())  # rewritten: the old cache is superseded
    current = _built(small_cohort, cache_dir)
    assert current.directory != old.directory
    reader = CachedCohort.load(old.directory)  # a training reading it (a lock of its own)
    kept = clean_cache_dir(cache_dir, current.directory.name, small_cohort)
    assert [(r.path, r.in_use) for r in kept] == [(old.directory, True)]
    assert "another process reads it" in kept[0].reason
    assert reader.volume(0).shape[0] == 12  # still readable
    reader.hold.release()  # the training ended
    removed = clean_cache_dir(cache_dir, current.directory.name, small_cohort)
    assert [(r.path, r.in_use) for r in removed] == [(old.directory, False)]
    assert not old.directory.exists() and current.directory.is_dir()


def test_a_reader_waits_for_a_removal_and_finds_the_cache_gone(small_cohort, tmp_path):
    cached = _built(small_cohort, tmp_path / "cache")
    hold = hold_for_reading(cached.directory)
    hold.release()
    cache_module.remove_cache(cached.directory, cached.directory.name)
    with pytest.raises(DamagedCacheError, match="folder missing"):
        hold_for_reading(cached.directory)


def _current(root: Path, cache_dir: Path, strategy: dict) -> tuple[str, str]:
    options = DataOptions(root=root, cache_dir=cache_dir, slices=strategy)
    records = discover_cohort(root, options.layout, options.label_spec, True, options.modalities).patients
    labels = options.layout.mask_labels
    args = (records, cache_dir, options.preprocess_spec, labels, slab_rule(options), options.modalities)
    return current_cache(*args)


def test_clean_keeps_the_caches_of_the_current_files_whatever_their_slab(small_cohort, tmp_path):
    cache_dir = tmp_path / "cache"
    tumour_slices, brain_slices = {"strategy": "tumor_topk", "k": 2}, {"strategy": "brain"}
    tumour = _built(small_cohort, cache_dir, slices=tumour_slices)  # no brain cache yet: its own
    brain = _built(small_cohort, cache_dir, slices=brain_slices)
    assert tumour.directory != brain.directory
    for slices, own in ((tumour_slices, tumour), (brain_slices, brain)):
        key, generation = _current(small_cohort, cache_dir, slices)
        assert key == own.directory.name
        assert clean_cache_dir(cache_dir, key, small_cohort, generation) == []
    assert tumour.directory.is_dir() and brain.directory.is_dir()

    patient = small_cohort / "BraTS20_Training_002" / "BraTS20_Training_002_t2.nii"
    patient.write_bytes(patient.read_bytes())  # rewritten: both are superseded
    key, generation = _current(small_cohort, cache_dir, tumour_slices)
    removed = clean_cache_dir(cache_dir, key, small_cohort, generation)
    assert sorted(r.path for r in removed) == sorted([tumour.directory, brain.directory])
    assert all(r.reason == "superseded cache" for r in removed)


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    return tiny_run(tmp_path_factory)


@pytest.mark.slow
def test_evaluate_notices_a_zeroed_cache_and_scores_as_training_did(trained, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(trained["cache"], cache, ignore=shutil.ignore_patterns(".*"))
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    volumes = folder / "volumes.npy"
    header = read_meta(folder)["files"]["volumes.npy"]["crc32_blocks"][0][1]
    _zero_in_place(volumes, header, volumes.stat().st_size)  # every voxel, same size and mtime
    base = [f"run_dir={trained['run']}", f"data.cache_dir={cache}", "bootstrap=10", "gradcam_n=0"]

    os.chmod(cache, 0o555)  # read-only: refused in one line
    try:
        if os.geteuid() != 0:  # root writes anyway
            refused = run_python("evaluate.py", *base, f"output_dir={tmp_path / 'refused'}")
            assert refused.returncode == 2
            (line,) = refused.stderr.strip().splitlines()
            assert str(volumes) in line and "crc32" in line and "read-only" in line
    finally:
        os.chmod(cache, 0o755)

    result = run_python("evaluate.py", *base, f"output_dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in (result.stdout + result.stderr).splitlines() if str(volumes) in line]
    assert said and "crc32" in said[0] and "rebuilding" in said[0], result.stdout[-3000:]
    evaluated = _rows(tmp_path / "eval" / "patient_predictions.csv")
    scored = {r["patient_id"]: float(r["probability"]) for r in evaluated}
    at_training = _rows(trained["run"] / "predictions_test.csv")
    trained_probs = {r["patient_id"]: float(r["prob_HGG"]) for r in at_training}
    assert scored.keys() == trained_probs.keys()
    for patient, probability in scored.items():
        assert probability == pytest.approx(trained_probs[patient], abs=1e-4)


_READER = """
import sys
from gliograde.data.caching.reader import CachedCohort
cached = CachedCohort.load(sys.argv[1])
print("open", flush=True)
sys.stdin.readline()
print(float(cached.volume(0).max()), flush=True)
"""


def _clean(root: Path, cache_dir: Path):
    return run_python(
        "-m", "gliograde.prepare", "data=brats2020", f"data.root={root}", f"data.cache_dir={cache_dir}",
        "data.slices.strategy=brain", "clean=true",
    )  # fmt: skip


@pytest.mark.slow
def test_clean_from_another_process_keeps_what_a_running_process_reads(small_cohort, tmp_path):
    cache_dir = tmp_path / "cache"
    old = _built(small_cohort, cache_dir)
    patient = small_cohort / "BraTS20_Training_002" / "BraTS20_Training_002_t2.nii"
    patient.write_bytes(patient.read_bytes())
    _built(small_cohort, cache_dir)
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(old.directory)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert reader.stdout.readline().strip() == "open"
        cleaned = _clean(small_cohort, cache_dir)
        assert cleaned.returncode == 0, cleaned.stderr[-3000:]
        kept = f"kept          {old.directory} (superseded cache, kept: another process reads it"
        assert kept in cleaned.stdout
        assert "in 0 folder(s)" in cleaned.stdout and old.directory.is_dir()
        out, _ = reader.communicate("\n", timeout=120)
    finally:
        reader.kill()
    assert reader.returncode == 0 and float(out.strip().splitlines()[-1]) > 0
    cleaned = _clean(small_cohort, cache_dir)
    assert f"removed       {old.directory} (superseded cache" in cleaned.stdout and not old.directory.exists()


def test_clean_supersedes_a_cache_of_an_older_format(small_cohort, tmp_path):
    cache_dir = tmp_path / "cache"
    cached = _built(small_cohort, cache_dir)
    meta_path = cached.directory / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["format"], meta["key"] = 6, "6" * 20  # an older version's keys differ too
    meta.pop("generation")
    meta["checksum"] = cache_meta._meta_checksum(meta)
    meta_path.write_text(json.dumps(meta))
    older = cached.directory.rename(cache_dir / meta["key"])
    key, generation = _current(small_cohort, cache_dir, {"strategy": "brain"})
    assert key == cached.directory.name  # not built in this version
    removed = clean_cache_dir(cache_dir, key, small_cohort, generation)
    assert [(r.path, r.reason) for r in removed] == [(older, "superseded cache")]

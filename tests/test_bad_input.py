"""Bad input data through the whole DataModule: every problem is ONE line naming the patient, the
file (or column) and the problem, raised as DataError before any training starts.

``on_error="raise"`` stops at the first problem; ``on_error="skip"`` drops the bad patients, lists
them in ``skipped.csv`` (beside ``cohort.csv`` in the cache directory) and in the log, and goes
on: ``setup()`` works and the patient is in no split and no dataset.

Damaged volumes are written with nibabel, keeping the BraTS affine of the original file.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.cohorts import make_datamodule, patient_file

import gliograde.data.caching.build as build_module
from gliograde.data.errors import DataError

PID = "BraTS20_Training_005"  # the patient we damage; not the first, so others decode before it
N_PATIENTS = 24
MAPPING = "name_mapping.csv"
ID_COL, LABEL_COL = "BraTS_2020_subject_ID", "Grade"


# ------------------------------------------------------------------------------------- helpers


def load_array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A copy of the voxels (in the file's dtype) and the affine, closing any memory map."""
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj).copy(), np.array(img.affine)


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Replace ``path`` with ``data`` (its own dtype) on ``affine``; .nii or .nii.gz by name."""
    if path.exists():
        path.unlink()
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_data_dtype(np.asarray(data).dtype)
    img.to_filename(str(path))
    return path


def rewrite(root: Path, pid: str, suffix: str, change) -> Path:
    """Rewrite ``pid``'s ``suffix`` volume as ``change(data)`` on the original affine."""
    path = patient_file(root, pid, suffix)
    data, affine = load_array(path)
    return write_volume(path, change(data), affine)


def to_nii_gz(root: Path, pid: str, suffix: str) -> Path:
    """Delete the .nii and save the same volume as .nii.gz with nibabel."""
    path = patient_file(root, pid, suffix)
    data, affine = load_array(path)
    path.unlink()
    return write_volume(path.with_name(path.name + ".gz"), data, affine)


def cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def read_mapping(root: Path) -> list[list[str]]:
    with open(root / MAPPING, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def write_mapping(root: Path, rows: list[list[str]]) -> None:
    with open(root / MAPPING, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


def drop_column(root: Path, column: str) -> None:
    rows = read_mapping(root)
    i = rows[0].index(column)
    write_mapping(root, [r[:i] + r[i + 1 :] for r in rows])


def set_grade(root: Path, pid: str, grade: str) -> None:
    rows = read_mapping(root)
    ic, il = rows[0].index(ID_COL), rows[0].index(LABEL_COL)
    hits = [r for r in rows[1:] if r[ic] == pid]
    assert len(hits) == 1
    hits[0][il] = grade
    write_mapping(root, rows)


def one_line(err: BaseException) -> str:
    assert isinstance(err, DataError) and isinstance(err, ValueError)
    msg = str(err)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
    return msg


def read_skipped(dm) -> list[dict[str, str]]:
    directory = Path(dm.cached.directory)
    assert (directory / "cohort.csv").is_file()
    path = directory / "skipped.csv"
    assert path.is_file(), f"no skipped.csv beside cohort.csv in {directory}"
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def patients_in_datasets(dm) -> dict[str, set[str]]:
    return {name: {ds.patient_ids[p] for p in ds.patient_positions} for name, ds in dm.datasets.items()}


def expect_raise(root: Path, cache_dir: Path, pid: str | None, file_part: str, words, **kw) -> str:
    """prepare_data() with on_error=raise fails with one line naming pid, file and problem."""
    dm = make_datamodule(root, cache_dir, **kw)
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    msg = one_line(info.value)
    if pid is not None:
        assert f"patient {pid}" in msg or f"{pid!r}" in msg, msg
    assert file_part in msg, msg
    for word in words:
        assert word in msg, msg
    assert dm.cached is None and not dm.datasets
    return msg


def expect_skip(root, cache_dir, pid, file_part, words, caplog, n_bad=1, **kw):
    """on_error=skip: pid dropped, in skipped.csv and the log; setup() works without it."""
    caplog.set_level(logging.WARNING)
    dm = make_datamodule(root, cache_dir, on_error="skip", **kw)
    dm.prepare_data()
    dm.setup()
    rows = read_skipped(dm)
    mine = [r for r in rows if r["patient_id"] == pid]
    assert len(mine) == 1, rows
    row_text = mine[0]["file"] + " " + mine[0]["problem"]
    assert file_part in row_text, mine
    for word in words:
        assert word in mine[0]["problem"], mine
    assert {r["patient_id"] for r in rows} == {pid}, rows
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(pid in m and words[0] in m for m in logged), logged
    table = dm.split_table()
    ids = [p for p, _, _ in table]
    assert pid not in ids
    assert len(ids) == N_PATIENTS - n_bad
    for name, present in patients_in_datasets(dm).items():
        assert pid not in present, name
    assert pid not in {p.patient_id for p in dm.patients}
    return dm


def leftovers(cache_dir: Path) -> list[str]:
    """Entries in cache_dir other than lock files."""
    if not cache_dir.exists():
        return []
    return sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock"))


# ------------------------------------------------------------------ per-patient damage, table
# Each case: (damage(root), file named in the message, problem words). Both modes are run.


def _missing_t1ce(root):
    patient_file(root, PID, "t1ce").unlink()


def _garbage(root):
    patient_file(root, PID, "t1").write_bytes(np.random.default_rng(0).bytes(5000))


def _truncated_nii(root):
    cut_in_half(patient_file(root, PID, "t1"))


def _truncated_nii_gz(root):
    cut_in_half(to_nii_gz(root, PID, "t1"))


def _two_d(root):
    rewrite(root, PID, "t2", lambda a: a[:, :, 10])


def _four_d(root):
    rewrite(root, PID, "t2", lambda a: np.stack([a, a, a], axis=-1))


def _other_shape(root):
    rewrite(root, PID, "t2", lambda a: a[:, :, :19])


def _other_affine(root):
    path = patient_file(root, PID, "t2")
    data, affine = load_array(path)
    affine[0, 3] += 5.0  # shifted by 5 mm: same shape, different grid
    write_volume(path, data, affine)


def _nan(root):
    def change(a):
        a = a.astype(np.float32)
        a[20, 20, 10] = np.nan
        return a

    rewrite(root, PID, "flair", change)


def _inf(root):
    def change(a):
        a = a.astype(np.float32)
        a[20, 20, 10] = np.inf
        a[21, 20, 10] = -np.inf
        return a

    rewrite(root, PID, "flair", change)


def _all_zero(root):
    rewrite(root, PID, "t1ce", np.zeros_like)


def _seg_label_3(root):
    def change(a):
        a = a.copy()
        a[20, 20, 10] = 3
        return a

    rewrite(root, PID, "seg", change)


def _no_label_row(root):
    rows = read_mapping(root)
    ic = rows[0].index(ID_COL)
    write_mapping(root, [r for r in rows if r[ic] != PID])


def _gbm(root):
    set_grade(root, PID, "GBM")


CASES = {
    "missing_t1ce": (_missing_t1ce, f"{PID}_t1ce.nii", ["missing", "t1ce"]),
    "garbage_nii": (_garbage, f"{PID}_t1.nii", ["unreadable"]),
    "truncated_nii": (_truncated_nii, f"{PID}_t1.nii", ["truncated"]),
    "truncated_nii_gz": (_truncated_nii_gz, f"{PID}_t1.nii.gz", ["truncated"]),
    "2d_volume": (_two_d, f"{PID}_t2.nii", ["2D", "3D"]),
    "4d_volume": (_four_d, f"{PID}_t2.nii", ["4D", "3D"]),
    "shape_mismatch": (_other_shape, f"{PID}_t2.nii", ["shape", "(40, 40, 19)", "(40, 40, 20)"]),
    "affine_mismatch": (_other_affine, f"{PID}_t2.nii", ["affine"]),
    "nan_voxels": (_nan, f"{PID}_flair.nii", ["NaN"]),
    "inf_voxels": (_inf, f"{PID}_flair.nii", ["infinite"]),
    "all_zero": (_all_zero, f"{PID}_t1ce.nii", ["all-zero"]),
    "seg_label_3": (_seg_label_3, f"{PID}_seg.nii", ["mask labels", "[3]", "outside"]),
    "no_label_row": (_no_label_row, MAPPING, ["no row", ID_COL]),
    "unknown_class": (_gbm, MAPPING, ["'GBM'", LABEL_COL]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_patient_raises(tiny_cohort, tmp_path, case):
    damage, file_part, words = CASES[case]
    damage(tiny_cohort)
    expect_raise(tiny_cohort, tmp_path / "cache", PID, file_part, words)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_patient_skipped(tiny_cohort, tmp_path, caplog, case):
    damage, file_part, words = CASES[case]
    damage(tiny_cohort)
    expect_skip(tiny_cohort, tmp_path / "cache", PID, file_part, words, caplog)


# --------------------------------------------------------- header checks come before decoding


@pytest.fixture
def decode_calls(monkeypatch):
    """Record every patient preprocess_patient is called for (workers=1: in this process)."""
    calls: list[str] = []
    original = build_module.preprocess_patient

    def recording(patient, *args, **kwargs):
        calls.append(patient)
        return original(patient, *args, **kwargs)

    monkeypatch.setattr(build_module, "preprocess_patient", recording)
    return calls


@pytest.mark.parametrize("case", ["garbage_nii", "truncated_nii", "truncated_nii_gz", "4d_volume"])
def test_unreadable_files_caught_before_any_decoding(tiny_cohort, tmp_path, decode_calls, case):
    damage, file_part, words = CASES[case]
    damage(tiny_cohort)
    expect_raise(tiny_cohort, tmp_path / "cache", PID, file_part, words)
    assert decode_calls == [], f"decoding started before the header check failed: {decode_calls}"
    assert leftovers(tmp_path / "cache") == []


def test_recorder_sees_decoding(tiny_cohort, tmp_path, decode_calls):
    """The recorder above really sees decoding (so an empty list there means something)."""
    make_datamodule(tiny_cohort, tmp_path / "cache").prepare_data()
    assert len(decode_calls) == N_PATIENTS


# --------------------------------------------------------------------------- accepted shapes


def test_trailing_singleton_4th_axis_is_accepted(tiny_cohort, tiny_cohort_master, tmp_path):
    rewrite(tiny_cohort, PID, "t2", lambda a: a[..., None])
    assert nib.load(str(patient_file(tiny_cohort, PID, "t2"))).shape == (40, 40, 20, 1)
    dm = make_datamodule(tiny_cohort, tmp_path / "cache")
    dm.prepare_data()
    dm.setup()
    assert dm.skipped == []
    assert PID in [p for p, _, _ in dm.split_table()]
    # Same voxels in the cache as from the untouched 3D file.
    ref = make_datamodule(tiny_cohort_master, tmp_path / "ref_cache")
    ref.prepare_data()
    got = dm.cached.volume(dm.cached.position(PID))
    want = ref.cached.volume(ref.cached.position(PID))
    np.testing.assert_array_equal(got, want)


def test_several_bad_patients_skipped_together(tiny_cohort, tmp_path, caplog):
    """Problems found by discovery, header check and decoding are all listed, each once."""
    caplog.set_level(logging.WARNING)
    bad = {
        "BraTS20_Training_002": "missing",
        "BraTS20_Training_011": "truncated",
        "BraTS20_Training_017": "NaN",
    }
    patient_file(tiny_cohort, "BraTS20_Training_002", "t1ce").unlink()
    cut_in_half(patient_file(tiny_cohort, "BraTS20_Training_011", "t2"))
    path = patient_file(tiny_cohort, "BraTS20_Training_017", "flair")
    data, affine = load_array(path)
    data = data.astype(np.float32)
    data[1, 2, 3] = np.nan
    write_volume(path, data, affine)

    dm = make_datamodule(tiny_cohort, tmp_path / "cache", on_error="skip")
    dm.prepare_data()
    dm.setup()
    rows = read_skipped(dm)
    assert {r["patient_id"]: r["problem"] for r in rows}.keys() == bad.keys()
    for r in rows:
        assert bad[r["patient_id"]] in r["problem"], r
    ids = {p for p, _, _ in dm.split_table()}
    assert len(ids) == N_PATIENTS - 3 and not ids & bad.keys()
    with open(Path(dm.cached.directory) / "cohort.csv", newline="") as fh:
        status = {r["patient_id"]: r["status"] for r in csv.DictReader(fh)}
    assert {p for p, s in status.items() if s == "skipped"} == bad.keys()


# ------------------------------------------------------------------- decoding errors: no cache


@pytest.mark.parametrize("case", ["nan_voxels", "all_zero", "seg_label_3"])
def test_decode_error_leaves_no_cache_and_fix_rebuilds(tiny_cohort, tiny_cohort_master, tmp_path, case):
    damage, file_part, words = CASES[case]
    damage(tiny_cohort)
    cache_dir = tmp_path / "cache"
    expect_raise(tiny_cohort, cache_dir, PID, file_part, words)
    assert leftovers(cache_dir) == [], "a half-written cache was left behind"
    # A later run does not trust anything from the failed one: it fails the same way.
    expect_raise(tiny_cohort, cache_dir, PID, file_part, words)
    assert leftovers(cache_dir) == []

    # Fix the file: the next run builds a complete, good cache.
    name = Path(file_part).name
    shutil.copyfile(tiny_cohort_master / PID / name, tiny_cohort / PID / name)
    dm = make_datamodule(tiny_cohort, cache_dir)
    dm.prepare_data()
    dm.setup()
    assert dm.skipped == [] and dm.cached.problems == []
    assert len(dm.cached.patient_ids) == N_PATIENTS and PID in dm.cached.patient_ids
    assert leftovers(cache_dir) == [dm.cached.directory.name]
    assert (dm.cached.directory / "index.npz").is_file()
    assert read_skipped(dm) == []
    assert PID in {p for p, _, _ in dm.split_table()}
    volume = dm.cached.volume(dm.cached.position(PID))
    assert np.isfinite(volume).all() and np.count_nonzero(volume) > 0


def test_decode_error_in_worker_process_keeps_patient_and_file(tiny_cohort, tmp_path):
    """The one multi-process test: the error crosses the worker boundary intact."""
    _nan(tiny_cohort)
    cache_dir = tmp_path / "cache"
    dm = make_datamodule(tiny_cohort, cache_dir, preprocess={"workers": 2})
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    msg = one_line(info.value)
    assert f"patient {PID}" in msg and f"{PID}_flair.nii" in msg and "NaN" in msg, msg
    assert info.value.patient == PID
    assert info.value.where is not None and info.value.where.endswith(f"{PID}_flair.nii")
    assert leftovers(cache_dir) == []


# -------------------------------------------------------------------------- the label table


def test_label_file_missing_required(tiny_cohort, tmp_path):
    (tiny_cohort / MAPPING).unlink()
    for on_error in ("raise", "skip"):
        msg = expect_raise(tiny_cohort, tmp_path / "cache", None, MAPPING, ["not found"], on_error=on_error)
        assert str(tiny_cohort) in msg, msg  # where it looked


@pytest.mark.parametrize("column", [LABEL_COL, ID_COL])
def test_label_column_missing_required(tiny_cohort, tmp_path, column):
    drop_column(tiny_cohort, column)
    role = "label" if column == LABEL_COL else "id"
    for on_error in ("raise", "skip"):
        msg = expect_raise(
            tiny_cohort,
            tmp_path / "cache",
            None,
            str(tiny_cohort / MAPPING),
            [f"no {role} column", repr(column)],
            on_error=on_error,
        )
        other = ID_COL if column == LABEL_COL else LABEL_COL
        assert repr(other) in msg, msg  # lists the columns present


@pytest.mark.parametrize("damage", ["missing_file", "no_label_column", "no_id_column"])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_unusable_label_table_not_required_means_unlabelled(tiny_cohort, tmp_path, caplog, damage, on_error):
    caplog.set_level(logging.WARNING)
    if damage == "missing_file":
        (tiny_cohort / MAPPING).unlink()
    else:
        drop_column(tiny_cohort, LABEL_COL if damage == "no_label_column" else ID_COL)
    dm = make_datamodule(tiny_cohort, tmp_path / "cache", require_labels=False, on_error=on_error)
    dm.prepare_data()
    assert dm.cohort.labelled is False
    assert all(r.label is None for r in dm.cohort.patients)
    assert any(MAPPING in r.getMessage() and "unlabelled" in r.getMessage() for r in caplog.records)
    dm.setup()
    table = dm.split_table()
    assert len(table) == N_PATIENTS
    assert {split for _, _, split in table} == {"all"}
    assert {label for _, label, _ in table} == {""}
    assert set(dm.datasets) == {"all"}
    assert read_skipped(dm) == []


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_duplicate_id_in_label_table(tiny_cohort, tmp_path, on_error):
    """A duplicate id makes the table ambiguous: an error in both modes (labels.py's contract)."""
    rows = read_mapping(tiny_cohort)
    ic = rows[0].index(ID_COL)
    dup = next(r for r in rows if r[ic] == PID)
    write_mapping(tiny_cohort, rows + [list(dup)])
    expect_raise(
        tiny_cohort, tmp_path / "cache", PID, MAPPING, ["duplicate", repr(ID_COL)], on_error=on_error
    )


# -------------------------------------------------------------------------------- the root


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("kind", ["empty", "unrelated", "absent"])
def test_bad_root(tmp_path, kind, on_error):
    root = tmp_path / "root"
    if kind == "empty":
        root.mkdir()
        words = ["no patient folders", "no subfolders"]
    elif kind == "unrelated":
        (root / "holiday_photos").mkdir(parents=True)
        (root / "holiday_photos" / "beach.jpg").write_bytes(b"\xff\xd8")
        (root / "notes.txt").write_text("nothing to see")
        words = ["no patient folders", "holiday_photos"]
    else:
        words = ["does not exist"]
    cache_dir = tmp_path / "cache"
    expect_raise(root, cache_dir, None, str(root), words, on_error=on_error)
    assert not cache_dir.exists()


# ------------------------------------------------------------------------- mask requirements


def test_no_mask_with_tumour_strategy_raises(tiny_cohort, tmp_path):
    patient_file(tiny_cohort, PID, "seg").unlink()
    # The message names the mask file that was expected, like a missing modality does.
    expect_raise(tiny_cohort, tmp_path / "cache", PID, f"{PID}_seg", ["mask", "tumor_topk"])
    assert leftovers(tmp_path / "cache") == []


def test_no_mask_with_tumour_strategy_skipped(tiny_cohort, tmp_path, caplog):
    patient_file(tiny_cohort, PID, "seg").unlink()
    expect_skip(tiny_cohort, tmp_path / "cache", PID, "mask", ["mask", "tumor_topk"], caplog)


def test_no_mask_with_brain_strategy_works(tiny_cohort, tmp_path):
    patient_file(tiny_cohort, PID, "seg").unlink()
    dm = make_datamodule(tiny_cohort, tmp_path / "cache", slices={"strategy": "brain"})
    dm.prepare_data()
    dm.setup()
    assert dm.skipped == []
    assert not dm.cached.has_mask[dm.cached.position(PID)]
    assert int(np.sum(dm.cached.has_mask)) == N_PATIENTS - 1
    assert PID in {p for p, _, _ in dm.split_table()}
    assert any(PID in present for present in patients_in_datasets(dm).values())

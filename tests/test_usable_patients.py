"""Which patients can be split and used: empty or absent masks, splits emptied by slice
selection, no split at all (external cohorts), and files that are not what they seem."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers.cohorts import make_datamodule, patient_file
from helpers.commands import run_python

from gliograde.config.compose import CONF_DIR, build
from gliograde.data.discovery.cohort import discover_cohort
from gliograde.data.errors import DataError
from gliograde.data.discovery.specs import MODALITIES, LabelSpec, LayoutSpec
from gliograde.errors import ConfigError

MAPPING = "name_mapping.csv"


def _grades(root: Path) -> dict[str, str]:
    with open(root / MAPPING, newline="") as fh:
        return {row["BraTS_2020_subject_ID"]: row["Grade"] for row in csv.DictReader(fh)}


def _rewrite_seg(root: Path, pid: str, change) -> None:
    path = patient_file(root, pid, "seg")
    img = nib.load(str(path))
    data, affine = np.asanyarray(img.dataobj).copy(), np.array(img.affine)
    del img
    path.unlink()
    nib.Nifti1Image(change(data).astype(data.dtype), affine).to_filename(str(path))


def _table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _one_lgg(root: Path) -> str:
    return sorted(pid for pid, grade in _grades(root).items() if grade == "LGG")[0]


# ------------------------------------------------------------------------------- empty masks


@pytest.mark.parametrize("strategy", ["tumor_topk", "tumor_all"])
def test_empty_mask_is_an_error_naming_patient_and_mask_file(tiny_cohort, tmp_path, strategy):
    pid = _one_lgg(tiny_cohort)
    _rewrite_seg(tiny_cohort, pid, np.zeros_like)
    dm = make_datamodule(tiny_cohort, tmp_path / "cache", slices={"strategy": strategy})
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert "\n" not in msg and f"patient {pid}" in msg and f"{pid}_seg.nii" in msg, msg
    assert "mask is empty" in msg and "data.on_error=skip" in msg, msg
    assert dm.cached is None


def test_empty_mask_skipped_is_listed_and_never_split(tiny_cohort, tmp_path, caplog):
    pid = _one_lgg(tiny_cohort)
    _rewrite_seg(tiny_cohort, pid, np.zeros_like)
    caplog.set_level(logging.WARNING)
    assignments = {}
    for strategy in ("tumor_topk", "tumor_all"):
        dm = make_datamodule(tiny_cohort, tmp_path / "cache", on_error="skip", slices={"strategy": strategy})
        dm.prepare_data()
        dm.setup()
        assignments[strategy] = dm.assignment
        skipped = _table(dm.cached.directory / "skipped.csv")
        assert [(r["patient_id"], r["file"].endswith(f"{pid}_seg.nii")) for r in skipped] == [(pid, True)]
        assert "mask is empty" in skipped[0]["problem"]
        status = {r["patient_id"]: r["status"] for r in _table(dm.cached.directory / "cohort.csv")}
        assert status[pid] == "skipped" and list(status.values()).count("ok") == 23
        assert pid not in dm.assignment and len(dm.assignment) == 23
        table = dm.cohort_table()
        assert table.set_index("patient_id").loc[pid, "status"] == "skipped"
        written = pd.read_csv(dm.cached.directory / "cohort.csv", dtype=str, keep_default_na=False)
        assert written.values.tolist() == table.values.tolist()
        assert dm.skipped_table()["patient_id"].tolist() == [pid]
        assert dm.summary()["skipped"] == 1
    assert any(pid in r.getMessage() and "mask is empty" in r.getMessage() for r in caplog.records)
    # One pool of patients whatever the tumour strategy, so one test set.
    assert assignments["tumor_topk"] == assignments["tumor_all"]


# --------------------------------------------------------------- splits emptied by selection


def _shrink_test_lgg_tumours(root: Path, cache_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Make the LGG test patients' tumours one voxel; return them and the original split."""
    dm = make_datamodule(root, cache_dir)
    dm.setup()
    before = dict(dm.assignment)
    small = sorted(p for p, s in before.items() if s == "test" and dm.classes[_label(dm, p)] == "LGG")
    assert small

    def one_voxel(seg):
        out = np.zeros_like(seg)
        out[tuple(np.argwhere(seg)[0])] = 1
        return out

    for pid in small:
        _rewrite_seg(root, pid, one_voxel)
    return small, before


def _label(dm, pid: str) -> int:
    return next(p.label for p in dm.patients if p.patient_id == pid)


def test_split_left_without_a_class_by_slice_selection_is_refused(tiny_cohort, tmp_path):
    small, before = _shrink_test_lgg_tumours(tiny_cohort, tmp_path / "cache")
    dm = make_datamodule(tiny_cohort, tmp_path / "cache", slices={"strategy": "tumor_all", "min_area": 2})
    with pytest.raises(ConfigError) as info:
        dm.setup()
    msg = str(info.value)
    assert "\n" not in msg and "test split has no LGG patient" in msg, msg
    assert "data.slices.min_area" in msg and "min_area=2" in msg, msg
    # The same files with tumor_topk: every patient keeps a slice, and the split is unchanged.
    dm = make_datamodule(tiny_cohort, tmp_path / "cache", slices={"strategy": "tumor_topk", "k": 2})
    dm.setup()
    assert dm.assignment == before
    assert all(len(p.slices) == 1 for p in dm.patients if p.patient_id in small)


@pytest.mark.slow
def test_train_py_refuses_an_emptied_split_before_training(tiny_cohort, tmp_path):
    _shrink_test_lgg_tumours(tiny_cohort, tmp_path / "cache")
    run = tmp_path / "run"
    result = run_python(
        "train.py",
        "data=brats2020",
        f"data.root={tiny_cohort}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.progress=false",
        "data.preprocess.workers=1",
        "data.slices.strategy=tumor_all",
        "data.slices.min_area=2",
        "debug=fast",
        f"hydra.run.dir={run}",
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "test split has no LGG patient" in lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not list(run.rglob("*.ckpt")) and not (run / "metrics.json").exists()


def test_no_slice_selected_anywhere_is_refused(tiny_cohort_master, tmp_path):
    slices = {"strategy": "tumor_all", "min_area": 10**6}
    dm = make_datamodule(tiny_cohort_master, tmp_path / "cache", slices=slices)
    with pytest.raises(ConfigError, match=r"selects no slice of any patient"):
        dm.setup()


# -------------------------------------------------------------------------- no split at all


@pytest.fixture
def external_cohort(tiny_cohort_master, tmp_path) -> Path:
    """6 patients of the tiny cohort, one of them LGG, with their own label table."""
    grades = _grades(tiny_cohort_master)
    lgg = [p for p, g in sorted(grades.items()) if g == "LGG"][:1]
    hgg = [p for p, g in sorted(grades.items()) if g == "HGG"][:5]
    root = tmp_path / "external"
    root.mkdir()
    for pid in lgg + hgg:
        os.symlink(tiny_cohort_master / pid, root / pid)
    with open(root / MAPPING, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["BraTS_2020_subject_ID", "Grade"])
        writer.writerows([[p, grades[p]] for p in lgg + hgg])
    return root


def test_an_unsplittable_cohort_is_refused_with_a_split(external_cohort, tmp_path):
    dm = make_datamodule(external_cohort, tmp_path / "cache")
    with pytest.raises(ConfigError, match=r"class LGG has 1 patient\(s\); the split .* needs at least 3"):
        dm.setup()


def test_split_none_puts_every_patient_in_all(external_cohort, tmp_path):
    dm = make_datamodule(external_cohort, tmp_path / "cache", split=None)
    dm.setup()
    assert set(dm.datasets) == {"all"} and set(dm.assignment.values()) == {"all"}
    grades = _grades(external_cohort)
    assert {p.patient_id: dm.classes[p.label] for p in dm.patients} == grades
    assert len(next(iter(dm.predict_dataloader()))["image"]) == 8
    with pytest.raises(ConfigError, match=r"no test split: data.split is null"):
        dm.test_dataloader()
    dm.write_splits(tmp_path / "splits.csv")
    assert {r["split"] for r in _table(tmp_path / "splits.csv")} == {"all"}


def test_split_none_without_labels(external_cohort, tmp_path):
    (external_cohort / MAPPING).unlink()
    dm = make_datamodule(external_cohort, tmp_path / "cache", split=None, require_labels=False)
    dm.setup()
    assert len(dm.patients) == 6 and all(p.label == -1 for p in dm.patients)


def test_split_none_with_folds_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data.folds=5 needs a split"):
        make_datamodule(tmp_path, tmp_path / "cache", split=None, folds=5, fold=0)


def test_data_split_null_in_config(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        overrides = ["data=brats2020", f"data.root={tmp_path}", "data.split=null"]
        cfg = compose("train", overrides=[*overrides, f"paths.output_dir={tmp_path}"])
    OmegaConf.resolve(cfg)
    assert build(cfg.data).split_spec is None


# ----------------------------------------------------------------------- masks the preset names


def _fake_patient(parent: Path, pid: str, mask: bool = True) -> Path:
    folder = parent / pid
    folder.mkdir(parents=True)
    for m in MODALITIES:
        (folder / f"{pid}_{m}.nii").write_bytes(b"")
    if mask:
        (folder / f"{pid}_seg.nii").write_bytes(b"")
    return folder


NO_LABELS = LabelSpec(file=None)


def test_a_brain_mask_is_never_taken_as_the_tumour_mask(tmp_path, caplog):
    pid = "BraTS20_Training_007"
    folder = _fake_patient(tmp_path, pid, mask=False)
    (folder / f"{pid}_brainmask.nii").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="gliograde"):
        cohort = discover_cohort(tmp_path, LayoutSpec(), NO_LABELS, require_labels=False)
    assert cohort.patients[0].mask is None and cohort.problems == []
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert pid in msg and f"{pid}_brainmask.nii" in msg and f"{pid}_seg.nii[.gz]" in msg, msg


def test_brain_mask_only_fails_a_tumour_strategy_before_decoding(tiny_cohort, tmp_path):
    pid = _one_lgg(tiny_cohort)
    seg = patient_file(tiny_cohort, pid, "seg")
    seg.rename(seg.with_name(f"{pid}_brainmask.nii"))
    dm = make_datamodule(tiny_cohort, tmp_path / "cache")
    with pytest.raises(DataError, match=rf"patient {pid}: .*{pid}_seg.nii\[.gz\]: no tumour mask"):
        dm.prepare_data()
    assert not (tmp_path / "cache").exists() or not any(
        p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")
    )


# --------------------------------------------------------------- what a file actually is


def test_a_modality_that_is_a_directory_says_so(tmp_path):
    pid = "BraTS20_Training_001"
    folder = _fake_patient(tmp_path, pid)
    (folder / f"{pid}_t1ce.nii").unlink()
    (folder / f"{pid}_t1ce.nii").mkdir()
    cohort = discover_cohort(tmp_path, LayoutSpec(), NO_LABELS, require_labels=False)
    (err,) = cohort.problems
    assert str(err) == f"patient {pid}: {folder}: t1ce file {pid}_t1ce.nii is a directory"


def test_a_modality_that_is_a_broken_link_says_so(tmp_path):
    pid = "BraTS20_Training_001"
    folder = _fake_patient(tmp_path, pid)
    target = tmp_path / "elsewhere" / "flair.nii"
    (folder / f"{pid}_flair.nii").unlink()
    os.symlink(target, folder / f"{pid}_flair.nii")
    cohort = discover_cohort(tmp_path, LayoutSpec(), NO_LABELS, require_labels=False)
    (err,) = cohort.problems
    assert f"flair file {pid}_flair.nii is a broken symbolic link to {target}" in str(err)
    assert "missing" not in str(err)


def test_a_patient_folder_with_a_trailing_space_is_named(tmp_path, caplog):
    ids = ["BraTS20_Training_001", "BraTS20_Training_002"]
    _fake_patient(tmp_path, ids[0])
    _fake_patient(tmp_path, ids[1] + " ")
    with open(tmp_path / MAPPING, "w", newline="") as fh:
        csv.writer(fh).writerows([["BraTS_2020_subject_ID", "Grade"], [ids[0], "LGG"], [ids[1], "HGG"]])
    with caplog.at_level(logging.WARNING, logger="gliograde"):
        cohort = discover_cohort(tmp_path, LayoutSpec(), LabelSpec(), require_labels=True)
    (err,) = cohort.problems
    assert err.patient == ids[1]
    assert f"folder name '{ids[1]} ' has a trailing space" in str(err)
    assert f"rename the folder to '{ids[1]}'" in str(err)
    assert not [r for r in caplog.records if "names no patient folder" in r.getMessage()]
    assert [p.patient_id for p in cohort.patients] == ids[:1]


# ------------------------------------------------------------------------ read-only caches


def test_a_read_only_cache_is_used_without_writing_tables(tiny_cohort_master, tmp_path, monkeypatch, caplog):
    dm = make_datamodule(tiny_cohort_master, tmp_path / "cache")
    dm.setup()
    directory = dm.cached.directory
    for name in ("cohort.csv", "skipped.csv"):
        (directory / name).unlink()
    real_access = os.access
    monkeypatch.setattr(
        "gliograde.data.pipeline.cohort_tables.os.access",
        lambda path, mode: False if Path(path) == directory else real_access(path, mode),
    )
    caplog.set_level(logging.INFO, logger="gliograde")
    dm = make_datamodule(tiny_cohort_master, tmp_path / "cache")
    dm.setup()
    assert len(dm.patients) == 24
    assert not (directory / "cohort.csv").exists() and not (directory / "skipped.csv").exists()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("read-only" in r.getMessage() for r in caplog.records)

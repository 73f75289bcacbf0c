"""A patient is known by what the model sees: a rescaled copy of its images is the same patient,
one image given for two modalities is refused, and a checkpoint knows its own training patients."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from helpers.cohorts import copy_patient, make_datamodule, patient_file

from gliograde.data.errors import DataError
from gliograde.data.discovery.identity import TRAINING_PATIENTS, content_matches, fingerprint_table, id_collisions
from gliograde.data.caching.preprocess import order_fingerprint, voxel_fingerprint
from gliograde.evaluation.checks import training_patients
from gliograde.evaluation.errors import EvaluationError
from gliograde.inference.inputs import from_folder, from_manifest
from gliograde.training.resume import nothing_left

PATIENT = "BraTS20_Training_002"


def _rescale(path: Path, factor: float) -> None:
    """Rewrite a NIfTI file with its voxels multiplied by ``factor``, stored as float32."""
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32) * np.float32(factor)
    nib.save(nib.Nifti1Image(data, image.affine), path)


def test_order_fingerprint_ignores_a_rescaling_but_not_an_edit():
    rng = np.random.default_rng(0)
    volume = np.zeros((30, 28, 12), dtype=np.int16)
    volume[5:25, 4:24, 2:10] = rng.integers(1, 3000, (20, 20, 8))
    reference = order_fingerprint(volume)
    for rescaled in (volume * 2, volume.astype(np.float32) * np.float32(0.37), volume.astype(np.uint16)):
        assert order_fingerprint(rescaled) == reference
    assert voxel_fingerprint(volume * 2) != voxel_fingerprint(volume)  # the voxel digest alone misses it
    edited = volume.copy()
    edited[10, 10, 5] += 1
    assert order_fingerprint(edited) != reference
    assert order_fingerprint(volume.reshape(28, 30, 12)) != reference


def test_patients_match_on_either_fingerprint():
    evaluated = fingerprint_table(["new"], {"flair": ["raw-b"]}, {"flair": ["order-a"]})
    trained = fingerprint_table(["old"], {"flair": ["raw-a"]}, {"flair": ["order-a"]})
    [match] = content_matches(evaluated, trained)
    assert (match.patient_id, match.other_id, match.modalities) == ("new", "old", ("flair",))
    older = fingerprint_table(["new"], {"flair": ["raw-b"]})  # a record without order fingerprints
    assert content_matches(older, trained) == [] and id_collisions(older, trained) == []
    same_id = fingerprint_table(["old"], {"flair": ["raw-b"]}, {"flair": ["order-a"]})
    assert id_collisions(same_id, trained) == []  # rescaled, not another patient
    assert content_matches(evaluated, fingerprint_table(["x"], {"flair": ["order-a"]})) == []  # kinds apart


def test_rescaled_copies_across_splits_are_refused(tiny_cohort, tmp_path):
    for n in range(8):  # eight copies of one patient cannot all land in one split
        folder = copy_patient(tiny_cohort, PATIENT, f"BraTS20_Training_{101 + n}")
        for modality in ("flair", "t1", "t1ce", "t2"):  # each at its own scale: no voxel is shared
            _rescale(folder / f"{folder.name}_{modality}.nii", 2.0 + n)
    dm = make_datamodule(tiny_cohort, tmp_path / "cache")
    with pytest.raises(DataError, match=r"same flair/t1/t1ce/t2 images as BraTS20_Training_1\d\d.* splits"):
        dm.setup()


def test_one_file_linked_as_two_modalities_is_refused_at_discovery(tiny_cohort, tmp_path):
    t1 = patient_file(tiny_cohort, PATIENT, "t1")
    t1.unlink()
    t1.symlink_to(patient_file(tiny_cohort, PATIENT, "flair"))
    dm = make_datamodule(tiny_cohort, tmp_path / "cache")
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    line = str(err.value)
    assert line.startswith(f"patient {PATIENT}: ") and "flair = t1 name one file" in line and "\n" not in line
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("*/volumes.npy"))


@pytest.mark.parametrize("factor", [1.0, 3.0])
def test_the_same_image_under_two_modality_names_is_refused_while_caching(tiny_cohort, tmp_path, factor):
    t2 = patient_file(tiny_cohort, PATIENT, "t2")
    shutil.copy(patient_file(tiny_cohort, PATIENT, "t1"), t2)
    _rescale(t2, factor)
    same = rf"patient {PATIENT}: .*_t2.nii: the t2 volume holds the same images as the t1 volume"
    with pytest.raises(DataError, match=same):
        make_datamodule(tiny_cohort, tmp_path / "cache").prepare_data()
    skipping = make_datamodule(tiny_cohort, tmp_path / "cache", on_error="skip")
    skipping.setup()
    assert PATIENT not in skipping.assignment and len(skipping.assignment) == 23


def test_predict_inputs_refuse_one_file_for_two_modalities(tiny_cohort, tmp_path):
    flair = patient_file(tiny_cohort, PATIENT, "flair")
    manifest = tmp_path / "list.csv"
    others = ",".join(str(patient_file(tiny_cohort, PATIENT, m)) for m in ("t1ce", "t2"))
    manifest.write_text(f"patient_id,flair,t1,t1ce,t2\nX,{flair},{flair},{others}\n")
    with pytest.raises(DataError, match=r"patient X: .*list.csv: row 2: flair = t1 name one file"):
        from_manifest(manifest)
    files = {m: "{id}_" + m for m in ("flair", "t1", "t1ce", "t2")}
    naming = {"modality_files": files, "mask_file": "{id}_seg"}
    shared = rf"patient {PATIENT}: .*flair = t1 name one file.*files.<modality>=GLOB"
    with pytest.raises(DataError, match=shared):
        from_folder(tiny_cohort / PATIENT, naming, {"t1": "*_flair.nii"})


def _splits(rows: list[tuple[str, str]]) -> pd.DataFrame:
    columns = ["patient_id", "label", "split", "fingerprint_flair"]
    return pd.DataFrame([[p, "HGG", s, f"raw-{p}"] for p, s in rows], columns=columns)


def test_evaluate_takes_training_patients_from_the_checkpoint_and_its_own_run(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    for folder, rows in ((run, [("a", "train"), ("b", "test")]), (other, [("b", "train"), ("a", "test")])):
        (folder / "checkpoints").mkdir(parents=True)
        _splits(rows).to_csv(folder / "splits.csv", index=False)
    recorded = other / "checkpoints" / "recorded.ckpt"
    torch.save({TRAINING_PATIENTS: _splits([("c", "train")]).to_dict("records")}, recorded)
    table, source = training_patients(recorded, run)
    assert list(table["patient_id"]) == ["c"] and str(recorded) in source
    bare = other / "checkpoints" / "bare.ckpt"
    torch.save({}, bare)  # a checkpoint made before training patients were recorded
    table, source = training_patients(bare, run)
    assert list(table["patient_id"]) == ["b"] and str(other / "splits.csv") in source
    own = run / "checkpoints" / "bare.ckpt"
    shutil.copy(bare, own)
    assert list(training_patients(own, run)[0]["patient_id"]) == ["a"]
    lone = tmp_path / "lone.ckpt"
    shutil.copy(bare, lone)
    with pytest.raises(EvaluationError, match="records no training patients"):
        training_patients(lone, run)


def _resumable(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A splits.csv as a run writes it, for a resumed DataModule to keep."""
    first = make_datamodule(tiny_cohort, tmp_path / "cache")
    first.setup()
    first.write_splits(tmp_path / "splits.csv")
    return tmp_path / "splits.csv"


def test_a_resumed_split_is_read_from_splits_csv(tiny_cohort, tmp_path):
    splits = _resumable(tiny_cohort, tmp_path)
    saved = pd.read_csv(splits, dtype=str)
    resumed = make_datamodule(tiny_cohort, tmp_path / "cache", split={"seed": 99})  # would split otherwise
    resumed.keep_split(splits)
    resumed.setup()
    assert resumed.assignment == dict(zip(saved["patient_id"], saved["split"]))
    fresh = make_datamodule(tiny_cohort, tmp_path / "cache", split={"seed": 99})
    fresh.setup()
    assert fresh.assignment != resumed.assignment


def test_a_resumed_split_refuses_a_cohort_that_gained_lost_or_changed_patients(tiny_cohort, tmp_path):
    splits = _resumable(tiny_cohort, tmp_path)
    before = splits.read_text()
    copy_patient(tiny_cohort, PATIENT, "BraTS20_Training_301")
    _rescale(patient_file(tiny_cohort, "BraTS20_Training_301", "flair"), 1.5)  # not PATIENT's images
    shutil.rmtree(tiny_cohort / "BraTS20_Training_003")
    _rescale(patient_file(tiny_cohort, PATIENT, "t1ce"), 2.0)  # the same patient, re-saved
    resumed = make_datamodule(tiny_cohort, tmp_path / "cache")
    resumed.keep_split(splits)
    with pytest.raises(DataError) as err:
        resumed.setup()
    assert str(err.value) == (
        f"{splits}: the cohort differs from the run's split: patients 1 added (e.g. BraTS20_Training_301), "
        f"1 removed (e.g. BraTS20_Training_003), 1 changed (e.g. {PATIENT}); a resumed run keeps its "
        "patients and split: restore the cohort as it was, or start a new run"
    )
    assert splits.read_text() == before and resumed.assignment == {}


def test_a_resumed_split_refuses_a_patient_whose_label_changed(tiny_cohort, tmp_path):
    splits = _resumable(tiny_cohort, tmp_path)
    mapping = tiny_cohort / "name_mapping.csv"
    lines = mapping.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.endswith("," + PATIENT))
    lines[row] = ("LGG" if lines[row].startswith("HGG") else "HGG") + lines[row][3:]
    mapping.write_text("\n".join(lines) + "\n")
    resumed = make_datamodule(tiny_cohort, tmp_path / "cache")
    resumed.keep_split(splits)
    with pytest.raises(DataError, match=rf"patients 1 changed \(e.g. {PATIENT}\)"):
        resumed.setup()


def test_a_finished_checkpoint_has_nothing_left_to_train(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    progress = {"current": {"ready": 1, "completed": 0, "started": 1, "processed": 1}}
    torch.save({"global_step": 4, "loops": {"fit_loop": {"epoch_progress": progress}}}, ckpt)
    assert nothing_left(ckpt, {"max_epochs": 1, "max_steps": -1}) == "its 1 epoch(s) reach trainer.max_epochs=1"
    assert nothing_left(ckpt, {"max_epochs": 2, "max_steps": -1}) is None
    assert nothing_left(ckpt, {"max_epochs": 5, "max_steps": 4}) == "its 4 steps reach trainer.max_steps=4"

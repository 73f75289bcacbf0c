"""The model's template: built from model-space patients, saved with checksums, loaded back,
refused in one line when a file changed or went missing, and built from a training run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from helpers.runs import tiny_run

from gliograde.data.errors import DataError
from gliograde.data.synthetic.generator import brats_affine, synthesize_patient
from gliograde.ingest.hospital_scans import model_grid_image
from gliograde.ingest.template import build_template, load_template, run_template, save_template

MODALITIES = ("flair", "t1", "t1ce", "t2")
SHAPE = (32, 32, 16)


def _write_patients(folder: Path, count: int, shape=SHAPE, seed: int = 0) -> list[dict[str, Path]]:
    patients = []
    for i in range(count):
        arrays = synthesize_patient(np.random.default_rng(seed + i), ("LGG", "HGG")[i % 2], shape)
        files = {}
        for m in MODALITIES:
            files[m] = folder / f"P{i}" / f"P{i}_{m}.nii.gz"
            files[m].parent.mkdir(parents=True, exist_ok=True)
            image = sitk.Cast(model_grid_image(arrays[m], brats_affine(shape)), sitk.sitkInt16)
            sitk.WriteImage(image, str(files[m]))
        patients.append(files)
    return patients


def test_model_grid_image_has_the_geometry_simpleitk_reads_from_the_nifti(tmp_path):
    import nibabel as nib

    arrays = synthesize_patient(np.random.default_rng(0), "HGG", SHAPE)
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(arrays["t1"], brats_affine(SHAPE)), path)
    read = sitk.ReadImage(str(path))
    made = model_grid_image(arrays["t1"], brats_affine(SHAPE))
    assert made.GetSize() == read.GetSize()
    np.testing.assert_allclose(made.GetOrigin(), read.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(made.GetDirection(), read.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(made.GetSpacing(), read.GetSpacing(), atol=1e-6)
    read_values = sitk.GetArrayFromImage(read).astype(np.float32)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(made), read_values)


def test_template_is_the_mean_brain_and_survives_a_save_and_load(tmp_path):
    patients = _write_patients(tmp_path / "cohort", 3)
    template = build_template(patients, MODALITIES)
    brain = template.brain
    assert brain.GetSpacing() == (2.0, 2.0, 2.0)
    values = sitk.GetArrayFromImage(brain)
    assert values.min() >= 0 and values.max() == pytest.approx(1.0)
    # The brain probability is the fraction of patients whose (2 mm) voxel is brain.
    masks = []
    for files in patients:
        nonzero = sum(sitk.GetArrayFromImage(sitk.ReadImage(str(files[m]))) > 0 for m in MODALITIES) > 0
        shrunk = sitk.BinShrink(sitk.GetImageFromArray(nonzero.astype(np.float32)), [2, 2, 2])
        masks.append(sitk.GetArrayFromImage(shrunk))
    np.testing.assert_allclose(values, np.mean(masks, axis=0), atol=1e-6)
    # Images are normalised per patient inside the brain: the mean brain's median is near 1.
    t1 = sitk.GetArrayFromImage(template.images["t1"])
    assert 0.7 < np.median(t1[values > 0.99]) < 1.3
    first = sitk.ReadImage(str(patients[0]["t1"]))
    assert template.grid.GetSize() == first.GetSize()
    assert template.grid.GetOrigin() == first.GetOrigin()
    assert template.meta["patients"] == ["P0", "P1", "P2"]

    folder = tmp_path / "template"
    save_template(template, folder)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".template")]  # no temp left
    loaded = load_template(folder)
    for m in MODALITIES:
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(loaded.images[m]), sitk.GetArrayFromImage(template.images[m])
        )
        assert loaded.images[m].GetOrigin() == pytest.approx(template.images[m].GetOrigin())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded.brain), values)
    assert loaded.grid.GetSize() == first.GetSize()
    np.testing.assert_allclose(loaded.grid.GetOrigin(), first.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(loaded.grid.GetDirection(), first.GetDirection(), atol=1e-6)
    assert loaded.meta == template.meta
    # Saving again over it replaces it whole.
    save_template(template, folder)
    assert load_template(folder).meta == template.meta


def test_a_changed_or_missing_template_file_is_one_line(tmp_path):
    template = build_template(_write_patients(tmp_path / "cohort", 2), MODALITIES)
    folder = tmp_path / "template"
    save_template(template, folder)
    # Rewritten with other voxels (a valid image, so only the checksum can tell).
    changed = sitk.GetArrayFromImage(template.brain) * 0.5
    image = sitk.GetImageFromArray(changed)
    image.CopyInformation(template.brain)
    sitk.WriteImage(image, str(folder / "brain.nii.gz"))
    with pytest.raises(DataError) as err:
        load_template(folder)
    assert "brain.nii.gz" in str(err.value) and "changed" in str(err.value) and "\n" not in str(err.value)

    save_template(template, folder)
    (folder / "flair.nii.gz").unlink()
    with pytest.raises(DataError, match=r"flair\.nii\.gz: missing template file"):
        load_template(folder)
    with pytest.raises(DataError, match="not a template folder"):
        load_template(tmp_path / "cohort")
    # Saving never replaces a folder that holds something other than a template.
    with pytest.raises(DataError, match="holds files but no template.json"):
        save_template(template, tmp_path / "cohort")
    assert (tmp_path / "cohort" / "P0").is_dir()


def test_patients_on_different_grids_are_refused(tmp_path):
    patients = _write_patients(tmp_path / "a", 1) + _write_patients(tmp_path / "b", 1, shape=(32, 32, 18))
    with pytest.raises(DataError, match=r"P0_flair\.nii\.gz: template: not on the first patient's grid"):
        build_template(patients, MODALITIES)


def _fake_run(tmp_path: Path, root: Path, train: list[str]) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    config = {"data": {"root": str(root), "modalities": list(MODALITIES)}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    splits = pd.DataFrame({"patient_id": train, "split": "train", "label": "LGG"})
    splits.to_csv(run / "splits.csv", index=False)
    return run


def test_run_template_refuses_a_run_whose_training_data_is_gone(tmp_path):
    run = _fake_run(tmp_path, tmp_path / "moved_away", ["BraTS20_Training_001"])
    with pytest.raises(DataError) as err:
        run_template(run)
    assert "is gone; pass ingest.template=FOLDER" in str(err.value) and "\n" not in str(err.value)
    assert not (run / "template").exists()
    with pytest.raises(DataError, match=r"no config\.yaml.*ingest\.template=FOLDER"):
        run_template(tmp_path)


@pytest.mark.slow
def test_run_template_is_built_from_the_training_patients_and_then_reused(tmp_path_factory, tmp_path):
    paths = tiny_run(tmp_path_factory)
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "splits.csv"):  # the shared run stays as it is
        shutil.copy(paths["run"] / name, run / name)
    splits = pd.read_csv(run / "splits.csv", dtype=str)
    train = sorted(splits.loc[splits["split"] == "train", "patient_id"])
    template = run_template(run, max_patients=3)
    assert (run / "template" / "template.json").is_file()
    assert len(train) > 3
    picks = np.linspace(0, len(train) - 1, 3).round().astype(int)  # evenly through the sorted ids
    assert template.meta["patients"] == [train[i] for i in picks]
    assert template.grid.GetSize() == (40, 40, 20)
    # The second call loads what the first saved: the same voxels, even with the data gone.
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["root"] = str(tmp_path / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    again = run_template(run, max_patients=3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.brain), sitk.GetArrayFromImage(template.brain))


def test_the_fingerprint_follows_anatomy_and_pose_not_the_folder(tmp_path):
    template = build_template(_write_patients(tmp_path / "cohort", 2), MODALITIES)
    save_template(template, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert load_template(tmp_path / "b").fingerprint == template.fingerprint  # same template, another folder
    other = build_template(_write_patients(tmp_path / "others", 2, seed=5), MODALITIES)
    assert other.fingerprint != template.fingerprint  # other patients, other anatomy
    moved = load_template(tmp_path / "a")
    moved.brain.SetOrigin(tuple(o + 2.0 for o in moved.brain.GetOrigin()))
    moved.__dict__.pop("fingerprint", None)
    assert moved.fingerprint != template.fingerprint  # same voxels, shifted 2 mm

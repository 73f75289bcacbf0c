"""predict.py: one folder, a root of folders and a manifest give one patient the same
probabilities, equal to evaluate.py's; masks optional; bad input refused in one line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.commands import run_python
from helpers.configs import compose_config
from helpers.runs import tiny_run

from gliograde.data.errors import DataError
from gliograde.errors import ConfigError, GliogradeError
from gliograde.inference.runner import predict

MODALITIES = ("flair", "t1", "t1ce", "t2")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def test_patients(run) -> list[str]:
    with open(run["run"] / "splits.csv", newline="") as fh:
        return sorted(r["patient_id"] for r in csv.DictReader(fh) if r["split"] == "test")


def _predict_in_process(*overrides: str) -> dict:
    cfg = compose_config("predict", overrides)
    return predict(cfg)


def _json(out: Path) -> dict[str, dict]:
    return {p["patient_id"]: p for p in json.loads((out / "predictions.json").read_text())["patients"]}


@pytest.mark.slow
def test_folder_root_and_manifest_agree_with_evaluate(run, test_patients, tmp_path):
    cohort, first = run["cohort"], test_patients[0]
    # a root of renamed patient folders, files named however the scanner exported them
    root = tmp_path / "root"
    for number, patient in enumerate(test_patients[:2]):
        folder = root / f"case_{number}"
        folder.mkdir(parents=True)
        for suffix in (*MODALITIES, "seg"):
            shutil.copy(cohort / patient / f"{patient}_{suffix}.nii", folder / f"scan-{suffix.upper()}.nii")
    manifest = tmp_path / "list.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "t2", "flair", "t1", "t1ce", "mask"])
        writer.writerow(
            ["alpha"] + [f"root/case_0/scan-{s.upper()}.nii" for s in ("t2", "flair", "t1", "t1ce", "seg")]
        )

    folder = run_python(
        "predict.py", f"ckpt={run['run']}", f"input={cohort / first}", f"output_dir={tmp_path / 'a'}"
    )
    assert folder.returncode == 0, folder.stderr[-3000:]
    assert f"{first}: " in folder.stdout
    patterns = [f"files.{m}=*-{m.upper()}.nii" for m in MODALITIES] + ["files.mask=*-SEG.nii"]
    by_root = _predict_in_process(
        f"ckpt={run['run']}", f"input={root}", f"output_dir={tmp_path / 'b'}", *patterns
    )
    by_manifest = _predict_in_process(
        f"ckpt={run['run']}", f"manifest={manifest}", f"output_dir={tmp_path / 'c'}"
    )

    one = _json(tmp_path / "a")[first]
    assert [p["patient_id"] for p in by_root["patients"]] == ["case_0", "case_1"]
    for other in (by_root["patients"][0], by_manifest["patients"][0]):
        assert other["probabilities"] == one["probabilities"]
        assert other["slice_index"] == one["slice_index"] and other["slice_rule"] == "mask"

    evaluated = run_python(
        "evaluate.py",
        f"run_dir={run['run']}",
        "bootstrap=20",
        "gradcam_n=0",
        f"output_dir={tmp_path / 'eval'}",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    with open(tmp_path / "eval" / "patient_predictions.csv", newline="") as fh:
        reference = {r["patient_id"]: r for r in csv.DictReader(fh)}
    assert one["probabilities"]["HGG"] == pytest.approx(float(reference[first]["probability"]), abs=1e-5)
    assert one["n_slices"] == int(reference[first]["n_slices"])
    with open(tmp_path / "a" / "predictions.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert row["prediction"] == reference[first]["prediction"] and row["slice_rule"] == "mask"
    assert set(row) == {"patient_id", "prob_LGG", "prob_HGG", "prediction", "n_slices", "slice_rule", "tumour_ml", "qc"}
    assert row["qc"] == ""  # not an ingested patient: no quality check to report
    # the mask's volume, the same number from both commands
    assert float(row["tumour_ml"]) == pytest.approx(float(reference[first]["tumour_ml"])) and float(row["tumour_ml"]) > 0
    for name in (f"{first}_slices.png", f"{first}_gradcam.png"):
        assert (tmp_path / "a" / name).stat().st_size > 1000


@pytest.mark.slow
def test_without_a_mask_the_model_is_refused_unless_the_mask_free_rule_is_asked(run, test_patients, tmp_path):
    root = tmp_path / "root"
    for name, source in (("P1", test_patients[0]), ("P2", test_patients[1])):
        (root / name).mkdir(parents=True)
        for suffix in (*MODALITIES, "seg"):
            target = root / name / f"{name}_{suffix}.nii"
            shutil.copy(run["cohort"] / source / f"{source}_{suffix}.nii", target)
    (root / "P1" / "P1_seg.nii").unlink()  # one patient folder without its mask
    refused = run_python("predict.py", f"ckpt={run['run']}", f"input={root}", f"output_dir={tmp_path / 'r'}")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("error: patient P1 has no tumour mask") and "tumor_topk" in line
    assert "segmenter=RUN" in line and "mask_free=brain" in line
    assert not (tmp_path / "r").exists()

    def refuse(*args, **kwargs):
        raise AssertionError("a patient was decoded before the refusal")

    with pytest.MonkeyPatch.context() as patch:  # refused from the file list alone
        patch.setattr("gliograde.inference.runner.load_patient", refuse)
        with pytest.raises(GliogradeError, match="patient P1 has no tumour mask"):
            _predict_in_process(f"ckpt={run['run']}", f"input={root}", f"output_dir={tmp_path / 'r'}")

    out = tmp_path / "o"
    report = _predict_in_process(
        f"ckpt={run['run']}", f"input={root}", f"output_dir={out}", "gradcam=false", "mask_free=brain"
    )
    rules = {row["patient_id"]: row["slice_rule"] for row in report["patients"]}
    assert rules == {"P1": "brain", "P2": "mask"}
    assert report["patients"][0]["n_slices"] > 4  # the brain's slices, not the tumour's top 4
    with open(out / "predictions.csv", newline="") as fh:
        assert {r["patient_id"]: r["slice_rule"] for r in csv.DictReader(fh)} == rules
    note = (
        "1 patient(s) graded by the brain rule without a tumour mask: the model was trained on tumour slices"
    )
    assert json.loads((out / "predictions.json").read_text())["mask_free_note"] == note
    assert note in (out / "report.html").read_text()
    with pytest.raises(ConfigError, match="mask_free='tumor_all'"):
        _predict_in_process(f"ckpt={run['run']}", f"input={root}", "mask_free=tumor_all")


def _copy_patient(run, patient: str, target: Path) -> Path:
    shutil.copytree(run["cohort"] / patient, target / patient)
    return target / patient


@pytest.mark.slow
def test_a_volume_off_the_model_grid_is_refused_unless_resampled(run, test_patients, tmp_path):
    folder = _copy_patient(run, test_patients[0], tmp_path)
    flair = folder / f"{test_patients[0]}_flair.nii"
    image = nib.load(flair)
    affine = image.affine.copy()
    affine[:3, :3] *= 1.5  # 1.5 mm voxels where the model saw 1 mm
    for path in folder.iterdir():
        other = nib.load(path)
        data = np.asarray(other.dataobj).copy()  # a copy: the file is rewritten in place
        nib.save(nib.Nifti1Image(data, affine, other.header), path)
    refused = run_python(
        "predict.py", f"ckpt={run['run']}", f"input={folder}", f"output_dir={tmp_path / 'o'}"
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert test_patients[0] in line and ".nii" in line and "[1.5, 1.5, 1.5]" in line
    assert "expected [1.0, 1.0, 1.0]" in line and "resample=true" in line
    report = _predict_in_process(
        f"ckpt={run['run']}",
        f"input={folder}",
        f"output_dir={tmp_path / 'r'}",
        "resample=true",
        "gradcam=false",
    )
    assert report["patients"][0]["resampled"] is True and report["patients"][0]["n_slices"] > 0


@pytest.mark.slow
def test_bad_files_get_one_line_naming_patient_and_file(run, test_patients, tmp_path):
    patient = test_patients[0]
    folder = _copy_patient(run, patient, tmp_path)
    t1 = folder / f"{patient}_t1.nii"
    image = nib.load(t1)
    data = np.asarray(image.dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), t1)
    with pytest.raises(DataError, match=rf"patient {patient}: .*_t1.nii: 1 NaN or infinite voxels"):
        _predict_in_process(f"ckpt={run['run']}", f"input={folder}", f"output_dir={tmp_path / 'o'}")
    t1.unlink()
    with pytest.raises(DataError, match=rf"patient {patient}: .*: no t1 volume .*files.t1=GLOB"):
        _predict_in_process(f"ckpt={run['run']}", f"input={folder}", f"output_dir={tmp_path / 'o'}")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"patient_id,flair,t1ce,t1,t2\nX,{folder}/a.nii,b.nii,c.nii,d.nii\n")
    with pytest.raises(DataError, match=r"patient X: .*a.nii: file not found"):
        _predict_in_process(f"ckpt={run['run']}", f"manifest={manifest}", f"output_dir={tmp_path / 'o'}")
    with pytest.raises(ConfigError, match="ckpt= is required"):
        _predict_in_process(f"input={folder}")
    with pytest.raises(ConfigError, match="exactly one of input"):
        _predict_in_process(f"ckpt={run['run']}", f"manifest={manifest}", f"input={folder}")


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_slices_are_cut_as_the_cache_dataset_reads_them(plane, tmp_path):
    from gliograde.data.caching.cache_box import BoxLayout
    from gliograde.data.batches.dataset import SliceDataset
    from gliograde.inference.stream import _cut

    rng = np.random.default_rng(0)
    volume = rng.standard_normal((6, 4, 5, 7)).astype(np.float16)  # [z, modality, y, x]
    np.save(tmp_path / "volumes.npy", volume)  # one patient's rows on the full grid
    chosen = np.array([1, 3, 4])
    modalities = ("t2", "flair")
    dataset = SliceDataset(
        volumes_path=tmp_path / "volumes.npy",
        layout=BoxLayout.full((6, 5, 7), patients=1),
        slots=np.zeros(3, dtype=np.int64),
        patient_positions=np.zeros(3, dtype=np.int64),
        slice_indices=chosen,
        labels=np.zeros(3, dtype=np.int64),
        patient_ids=("p",),
        modalities=modalities,
        plane=plane,
        dtype=torch.float16,
    )
    expected = dataset.__getitems__([0, 1, 2])["image"].numpy()
    cut = _cut(volume, chosen, [MODALITIES.index(m) for m in modalities], plane)
    assert cut.shape == expected.shape and np.array_equal(cut, expected)

"""A classifier of tumour slices grades patients without a mask through a segmenter: evaluate.py
and predict.py take ``segmenter=``, choose the classifier's own slices from the predicted mask,
say so per patient with the predicted volume, and report a patient without a tumour ungraded."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers.commands import run_python
from helpers.configs import compose_config
from helpers.runs import tiny_segmenter_run, tiny_train_args

from gliograde.segmentation.predicted import segmenter_note

pytestmark = pytest.mark.slow

# The tiny cohort's tumours are about 0.3 mL (40x40x20 voxels of 1 mm): below the default floor.
TINY = "min_tumour_ml=0.05"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tiny_segmenter_run(tmp_path_factory)


def _test_patients(run: Path) -> list[str]:
    splits = pd.read_csv(run / "splits.csv")
    return sorted(splits.loc[splits["split"] == "test", "patient_id"])


def _mask_free_copy(cohort: Path, patients: list[str], target: Path) -> Path:
    """The patients' folders without their tumour masks, as a hospital has them."""
    for patient in patients:
        shutil.copytree(cohort / patient, target / patient)
        for mask in (target / patient).glob("*_seg.nii*"):
            mask.unlink()
    return target


def _one_line_exit_2(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def test_evaluate_with_hidden_masks_grades_on_predicted_masks(runs):
    run, seg = runs["run"], runs["segmenter"]
    result = run_python(
        "evaluate.py", f"run_dir={run}", "masks=hidden", f"segmenter={seg}", TINY, "bootstrap=20", "gradcam_n=0",
        "progress=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = run / "eval" / "test_masks-hidden_segmenter"
    table = pd.read_csv(out / "patient_predictions.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    entry = metrics["segmenter"]
    graded = set(table["patient_id"])
    assert graded | set(entry["no_tumour"]) == set(_test_patients(run))
    assert (table["slice_rule"] == "predicted mask").all()
    assert (table["tumour_ml"] > 0).all()
    assert entry["patients_segmented"] == len(_test_patients(run))
    for patient, ml in zip(table["patient_id"], table["tumour_ml"]):
        assert entry["predicted_ml"][patient] == pytest.approx(ml)
    assert "predicted the tumour mask of" in result.stdout
    page = (out / "report.html").read_text()
    assert segmenter_note(entry) in html.unescape(page)  # the terminal's note, on the page too
    # the same patients with their true masks: the rule and the volume are the mask's
    with_masks = run_python("evaluate.py", f"run_dir={run}", "bootstrap=20", "gradcam_n=0", "progress=false")
    assert with_masks.returncode == 0, with_masks.stderr[-3000:]
    truth = pd.read_csv(run / "eval" / "test" / "patient_predictions.csv").set_index("patient_id")
    assert (truth["slice_rule"] == "mask").all() and (truth["tumour_ml"] > 0).all()
    compared = run_python(
        "-m", "gliograde.compare", str(run / "eval" / "test"), str(out)
    )
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert "DeLong" in compared.stdout


def test_predict_with_a_segmenter_grades_a_mask_free_patient_and_writes_its_mask(runs, tmp_path):
    run, seg = runs["run"], runs["segmenter"]
    patients = _test_patients(run)[:2]
    folder = _mask_free_copy(runs["cohort"], patients, tmp_path / "hospital")
    out = tmp_path / "out"
    result = run_python(
        "predict.py", f"ckpt={run}", f"input={folder}", f"segmenter={seg}", "save_masks=true", TINY,
        f"output_dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(out / "predictions.csv").set_index("patient_id")
    report = json.loads((out / "predictions.json").read_text())
    assert report["segmenter"]["source"] == str(seg)
    page = (out / "report.html").read_text()
    for patient in patients:
        row = table.loc[patient]
        if patient in report["segmenter"]["no_tumour"]:
            assert row["slice_rule"] == "no tumour found" and np.isnan(row["prob_HGG"])
            continue
        assert row["slice_rule"] == "predicted mask" and row["tumour_ml"] > 0
        assert (out / f"{patient}_outline.png").is_file() and f'alt="{patient}_outline"' in page
        written = nib.load(str(out / f"{patient}_predicted_mask.nii.gz"))
        scan = nib.load(str(next((folder / patient).glob("*_flair.nii*"))))
        assert written.shape == scan.shape and np.allclose(written.affine, scan.affine)
        volume = np.asarray(written.dataobj)
        assert set(np.unique(volume)) <= {0, 1}
        ml = volume.sum() * float(np.prod(scan.header.get_zooms()[:3])) / 1000
        assert ml == pytest.approx(row["tumour_ml"])
        # the predicted mask overlaps the true one (the copy dropped it; the cohort has it)
        truth = np.asarray(nib.load(str(next((runs["cohort"] / patient).glob("*_seg.nii*")))).dataobj) > 0
        assert (volume.astype(bool) & truth).sum() > 0.3 * truth.sum()
    assert "predicted mask" in result.stdout


def test_a_patient_without_tumour_is_reported_not_graded(runs, tmp_path, monkeypatch):
    """A segmenter that finds nothing: the patient's row says so, without probabilities."""
    from gliograde.inference.runner import predict
    from gliograde.segmentation import inference

    real = inference.open_segmenter

    class FindsNothing:
        def __init__(self, source):
            self.inner = real(source, device="cpu")
            self.contract, self.path, self.test_dice = self.inner.contract, self.inner.path, None

        def segment(self, volume, stored):
            return np.zeros((volume.shape[0], *volume.shape[2:]), dtype=bool)

    monkeypatch.setattr(inference, "open_segmenter", lambda source, device=None: FindsNothing(source))
    patient = _test_patients(runs["run"])[0]
    folder = _mask_free_copy(runs["cohort"], [patient], tmp_path / "hospital")
    out = tmp_path / "out"
    report = predict(
        compose_config(
            "predict",
            [f"ckpt={runs['run']}", f"input={folder}", f"segmenter={runs['segmenter']}", f"output_dir={out}",
             "save_masks=true"],
        )
    )  # fmt: skip
    row = report["patients"][0]
    assert row["slice_rule"] == "no tumour found" and row["prediction"] == "no tumour found"
    assert row["n_slices"] == 0 and row["probabilities"] == {"LGG": None, "HGG": None}
    assert report["segmenter"]["no_tumour"] == {patient: row["note"]}
    assert "found no tumour" in row["note"]
    assert "mask_free_note" not in report  # not graded, so not graded by another rule either
    table = pd.read_csv(out / "predictions.csv")
    assert table.loc[0, "prediction"] == "no tumour found" and np.isnan(table.loc[0, "prob_HGG"])
    assert np.asarray(nib.load(str(out / f"{patient}_predicted_mask.nii.gz")).dataobj).sum() == 0


def test_segmenter_options_refused_in_one_line(runs, tmp_path):
    run, seg = runs["run"], runs["segmenter"]
    folder = _mask_free_copy(runs["cohort"], _test_patients(run)[:1], tmp_path / "hospital")
    # a classifier where the segmenter goes
    line = _one_line_exit_2(
        run_python("predict.py", f"ckpt={run}", f"input={folder}", f"segmenter={run}", f"output_dir={tmp_path / 'a'}")
    )
    assert "is a classifier" in line and not (tmp_path / "a").exists()
    line = _one_line_exit_2(
        run_python("evaluate.py", f"run_dir={run}", "masks=hidden", f"segmenter={run}", f"output_dir={tmp_path / 'b'}")
    )
    assert "is a classifier" in line and not (tmp_path / "b").exists()
    # a missing segmenter
    line = _one_line_exit_2(
        run_python("predict.py", f"ckpt={run}", f"input={folder}", f"segmenter={tmp_path / 'nothing'}")
    )
    assert "nothing" in line
    # a floor that is not a volume
    line = _one_line_exit_2(
        run_python("predict.py", f"ckpt={run}", f"input={folder}", f"segmenter={seg}", "min_tumour_ml=abc")
    )
    assert "min_tumour_ml=abc" in line
    # save_masks without a segmenter
    line = _one_line_exit_2(
        run_python("predict.py", f"ckpt={run}", f"input={folder}", "mask_free=brain", "save_masks=true")
    )
    assert "save_masks=true" in line and "segmenter=" in line



def test_a_full_size_patient_without_a_mask_graded_through_a_segmenter(tmp_path):
    """240x240x155: segment() of a cached patient, then predict.py through the segmenter on the
    patient's folder without its mask, the mask written back on the scan's grid (models of one
    training step: the shapes, the files and the times are what is checked)."""
    from benchmarks.training_loop import measure_predict
    from benchmarks.segmenter_bench import measure_segment

    from gliograde.data.synthetic.generator import generate_cohort

    cohort = generate_cohort(tmp_path / "cohort", patients=2, seed=3, shape=(240, 240, 155))
    measure_predict(cohort, tmp_path / "cache", tmp_path, repeats=1, seed=0)  # leaves predict-model.ckpt
    seconds, segmenter = measure_segment(cohort, tmp_path / "cache-seg", tmp_path, repeats=1, seed=0)
    assert seconds < 30
    patient = sorted(p for p in cohort.iterdir() if p.is_dir())[0]
    folder = _mask_free_copy(cohort, [patient.name], tmp_path / "hospital")
    out = tmp_path / "out"
    result = run_python(
        "predict.py", f"ckpt={tmp_path / 'predict-model.ckpt'}", f"input={folder}", f"segmenter={segmenter}",
        "save_masks=true", "min_tumour_ml=0", f"output_dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    assert row["slice_rule"] in ("predicted mask", "no tumour found")
    written = nib.load(str(out / f"{patient.name}_predicted_mask.nii.gz"))
    assert written.shape == (240, 240, 155)


def test_an_export_bundling_a_segmenter_grades_a_mask_free_patient_without_lightning(runs, tmp_path):
    run, seg = runs["run"], runs["segmenter"]
    export = tmp_path / "export"
    done = run_python("-m", "gliograde.export", str(run), f"segmenter={seg}", "--output", str(export))
    assert done.returncode == 0, done.stderr[-3000:]
    patient = _test_patients(run)[0]
    folder = _mask_free_copy(runs["cohort"], [patient], tmp_path / "hospital")
    out = tmp_path / "out"
    # -X importtime would be noisy: ask the interpreter which modules the command imported
    probe = (
        "import runpy, sys; sys.argv = sys.argv[1:]; "
        "import atexit; atexit.register(lambda: print('LIGHTNING' if 'pytorch_lightning' in sys.modules else 'NO-LIGHTNING'))\n"
        "runpy.run_path('predict.py', run_name='__main__')"
    )
    result = run_python(
        "-c", probe, "predict.py", f"ckpt={export}", f"input={folder}", TINY, "save_masks=true", f"output_dir={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NO-LIGHTNING" in result.stdout
    report = json.loads((out / "predictions.json").read_text())
    assert report["segmenter"]["source"].endswith("(bundled)")
    row = report["patients"][0]
    assert row["slice_rule"] in ("predicted mask", "no tumour found")
    assert (out / f"{patient}_predicted_mask.nii.gz").is_file()


def test_a_what_if_evaluation_leaves_the_runs_recipe_alone(runs, tmp_path):
    """A Youden threshold fitted on patients graded without their masks is never the recipe that
    predict.py applies to patients who have them."""
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run, ignore=shutil.ignore_patterns("eval", "export", "tensorboard"))
    before = sorted(p.name for p in run.iterdir())
    result = run_python(
        "evaluate.py", f"run_dir={run}", "masks=hidden", "mask_free=brain", "threshold=youden", "bootstrap=20",
        "gradcam_n=0", "progress=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not recorded as the run's recipe" in result.stdout
    new = {p.name for p in run.iterdir()} - set(before)
    assert new <= {"eval", "tensorboard"}, new  # the report and its figures only
    assert not (run / "recipe.json").exists()


def test_a_segmenter_trained_on_the_evaluated_patients_is_refused(runs, tmp_path):
    """Its masks of patients it trained on are better than those of new patients would be."""
    run = runs["run"]
    other = {"cohort": runs["cohort"], "cache": runs["cache"]}
    trained = run_python(
        *tiny_train_args(other, "task=segment", "seed=5", "data.split.train=0.75", "data.split.val=0.125",
                         "data.split.test=0.125", f"hydra.run.dir={tmp_path / 'seg'}")
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    seg_train = set(pd.read_csv(tmp_path / "seg" / "splits.csv").query("split == 'train'")["patient_id"])
    assert seg_train & set(_test_patients(run))  # 12 of 16 patients: the test split shares some
    line = _one_line_exit_2(
        run_python(
            "evaluate.py", f"run_dir={run}", "masks=hidden", f"segmenter={tmp_path / 'seg'}", TINY,
            f"output_dir={tmp_path / 'out'}", "progress=false",
        )
    )  # fmt: skip
    assert "segmenter:" in line and "training split" in line and "allow_leak=true" in line
    assert not (tmp_path / "out").exists()


def test_save_masks_into_a_read_only_or_filling_place_leaves_nothing(runs, tmp_path, monkeypatch):
    """Refused before any patient is segmented; a disk that fills while a mask is written
    leaves no folder either."""
    import errno
    import os

    from helpers.disk import refuse_writes

    from gliograde.inference import predicted_tumours, runner
    from gliograde.files.output_folder import OutputError

    folder = _mask_free_copy(runs["cohort"], _test_patients(runs["run"])[:1], tmp_path / "hospital")
    place = tmp_path / "place"
    place.mkdir()
    overrides = [
        f"ckpt={runs['run']}", f"input={folder}", f"segmenter={runs['segmenter']}", "save_masks=true", TINY,
        f"output_dir={place / 'out'}", "gradcam=false",
    ]  # fmt: skip
    with monkeypatch.context() as patch:
        refuse_writes(patch, place)
        patch.setattr(runner, "load_patient", lambda *a, **k: pytest.fail("a patient was decoded"))
        with pytest.raises(OutputError, match=r"output_dir=.*place/out: cannot write there \(Read-only"):
            runner.predict(compose_config("predict", overrides))
    assert os.listdir(place) == []

    real = predicted_tumours.write_mask

    def fill_then_write(*args, **kwargs):
        refuse_writes(monkeypatch, place, errno.ENOSPC)
        return real(*args, **kwargs)

    monkeypatch.setattr(predicted_tumours, "write_mask", fill_then_write)
    with pytest.raises(OutputError, match=r"output_dir=.*place/out: cannot be written \(No space left on"):
        runner.predict(compose_config("predict", overrides))
    monkeypatch.undo()
    assert os.listdir(place) == []

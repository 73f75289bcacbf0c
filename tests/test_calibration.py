"""Temperature calibration: the fit recovers a known temperature; evaluate.py stores, applies and
reports it, and records it in the run's recipe; predict.py follows that recipe (TTA and
temperature) from the checkpoint and the export alike; a recipe that belongs to another
checkpoint is never used silently, and an export made before it is named stale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from helpers.commands import run_python
from helpers.configs import compose_config
from helpers.runs import tiny_run

from gliograde.evaluation.calibration import fit_temperature, patient_nll
from gliograde.evaluation.plots import reliability_figure
from gliograde.inference.recipe import RecipeError
from gliograde.inference.inputs import from_folder
from gliograde.inference.models import TorchModel, find_checkpoint
from gliograde.inference.runner import predict
from gliograde.files.sealed import write_sealed
from gliograde.inference.stream import load_patient
from gliograde.models.patient_scores import slice_log_probs


def _synthetic(temperature: float, patients: int, slices: int, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / temperature), patient by patient."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(patients * slices, 1, 2))
    slice_patient = np.repeat(np.arange(patients), slices)
    probs = np.exp(slice_log_probs(logits, temperature))
    patient_probs = probs.reshape(patients, slices, 2).mean(axis=1)[:, 1]
    labels = (rng.random(patients) < patient_probs).astype(int)
    return logits, slice_patient, labels


@pytest.mark.parametrize("true_t, slices", [(2.5, 1), (0.5, 1), (2.0, 3)])
def test_the_fit_recovers_a_known_temperature(true_t, slices):
    logits, slice_patient, labels = _synthetic(true_t, 6000 // slices, slices)
    fitted, before, after = fit_temperature(logits, slice_patient, labels)
    assert abs(np.log(fitted / true_t)) < 0.1
    assert after < before == pytest.approx(patient_nll(logits, slice_patient, labels, "mean", None, 1.0))
    assert after == pytest.approx(patient_nll(logits, slice_patient, labels, "mean", None, fitted))


def test_a_calibrated_model_keeps_its_temperature_of_one():
    logits, slice_patient, labels = _synthetic(1.0, 6000, 1, seed=3)
    assert abs(np.log(fit_temperature(logits, slice_patient, labels)[0])) < 0.1


def test_the_reliability_plot_draws_both_curves():
    labels = np.array([0, 0, 1, 1, 1, 0])
    after = np.array([0.2, 0.3, 0.7, 0.8, 0.6, 0.4])
    figure = reliability_figure(labels, after, uncalibrated=after**3)
    names = [line.get_label() for line in figure.axes[0].get_lines()]
    assert "before calibration" in names and "calibrated" in names
    plt.close(figure)


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    paths = tiny_run(tmp_path_factory)
    run = tmp_path_factory.mktemp("calibration") / "run"
    ignore = shutil.ignore_patterns("eval", "export", "tensorboard", "last.ckpt", "calibration.json")
    shutil.copytree(paths["run"], run, ignore=ignore)
    result = run_python(
        "evaluate.py",
        f"run_dir={run}",
        "bootstrap=20",
        "gradcam_n=0",
        "threshold=youden",
        "tta=flip",
        "calibration=temperature",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    yield {**paths, "run": run, "stdout": result.stdout}
    shutil.rmtree(run.parent, ignore_errors=True)


def _predict(run: dict, out: Path, *overrides: str) -> dict:
    patient = _test_patients(run["run"])[0]
    cfg = compose_config("predict", [f"input={run['cohort'] / patient}", f"output_dir={out}", *overrides])
    return predict(cfg)


def _test_patients(run: Path) -> list[str]:
    lines = (run / "splits.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    return sorted(r["patient_id"] for r in rows if r["split"] == "test")


@pytest.mark.slow
def test_evaluate_stores_applies_and_reports_the_temperature(run):
    folder = run["run"] / "eval" / "test_youden_flip_temperature"
    stored = json.loads((run["run"] / "calibration.json").read_text())
    assert stored["method"] == "temperature" and stored["tta"] == "flip" and stored["aggregate"] == "mean"
    assert stored["checkpoint"] == str(find_checkpoint(run["run"])) and len(stored["val_patients"]) == 4
    assert stored["nll_after"] <= stored["nll_before"]
    assert not list(run["run"].glob(".calibration.json*"))

    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["tta"] == "flip"
    calibration = metrics["calibration"]
    assert calibration["method"] == "temperature" and calibration["temperature"] == stored["temperature"]
    assert "note" not in calibration  # the test patients are not the ones it was fitted on
    for name in ("ece", "brier"):
        entry = calibration["patient"][name]
        assert set(entry) == {"before", "after"} and entry["after"] == metrics["patient"][name]["value"]
    low, high = metrics["threshold_interval"]
    assert low < metrics["threshold"] <= high and metrics["threshold"] == pytest.approx((low + high) / 2)
    assert f"({low:.3f}, {high:.3f}]" in run["stdout"] and "calibrated" in run["stdout"]

    page = (folder / "report.html").read_text()
    # the lines the terminal prints
    star = "*" if calibration["unreliable"] else ""
    temperature = f"T={stored['temperature']:.4f}{star}"
    said = [f"Calibration: temperature scaling, {temperature}, fitted on 4 validation patients"]
    for name in ("ece", "brier"):
        entry = calibration["patient"][name]
        said.append(f"Calibration, patient {name}: {entry['before']:.3f} before, {entry['after']:.3f} after")
    for line in said:
        assert line in run["stdout"] and f"<p class=\"note\">{line}</p>" in page
    assert "tta=flip" in page and (folder / "reliability.png").is_file()

    # the patient probabilities are the calibrated mean over flipped views of the slices
    model = TorchModel(find_checkpoint(run["run"]))
    patient = _test_patients(run["run"])[0]
    files = from_folder(run["cohort"] / patient, model.contract["naming"], {})
    images = load_patient(files, model.contract, resample=False).images
    expected = model.probabilities(images, 16, "flip", stored["temperature"]).mean(axis=0)[1]
    table = (folder / "patient_predictions.csv").read_text().splitlines()
    row = next(line.split(",") for line in table if line.startswith(patient + ","))
    assert float(row[2]) == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_predict_applies_the_temperature_from_checkpoint_and_export(run, tmp_path):
    stored = json.loads((run["run"] / "calibration.json").read_text())
    # no tta= given: the recipe's (tta=flip) is followed, not refused
    from_ckpt = _predict(run, tmp_path / "ckpt", f"ckpt={run['run']}")
    assert from_ckpt["tta"] == "flip"
    assert from_ckpt["calibration"]["temperature"] == stored["temperature"]
    written = json.loads((tmp_path / "ckpt" / "predictions.json").read_text())
    assert written["calibration"]["source"] == str(run["run"] / "recipe.json")
    recipe = json.loads((run["run"] / "recipe.json").read_text())
    assert written["recipe"]["threshold"] == recipe["threshold"] == written["threshold"]
    assert recipe["sources"]["threshold"].startswith("threshold=youden on 4 validation patients")
    # the same patient's probability as evaluate.py's calibrated report
    patient = from_ckpt["patients"][0]
    table = (run["run"] / "eval" / "test_youden_flip_temperature" / "patient_predictions.csv").read_text()
    row = next(line.split(",") for line in table.splitlines() if line.startswith(patient["patient_id"] + ","))
    assert patient["probabilities"]["HGG"] == pytest.approx(float(row[2]), abs=1e-5)
    uncalibrated = _predict(run, tmp_path / "none", f"ckpt={run['run']}", "tta=flip", "recipe=none")
    assert uncalibrated["calibration"]["method"] == "none"
    assert uncalibrated["patients"][0]["probabilities"] != patient["probabilities"]

    exported = run_python("-m", "gliograde.export", str(run["run"]))
    assert exported.returncode == 0, exported.stderr[-3000:]
    card = json.loads((run["run"] / "export" / "model_card.json").read_text())
    assert card["calibration"] == stored
    markdown = (run["run"] / "export" / "MODEL_CARD.md").read_text()
    assert f"temperature T={stored['temperature']:.4f}" in markdown
    # its metrics are training's point values (tta=none, no temperature): the card says so
    assert card["metrics"]["test"]["calibration"] == "none"
    assert card["calibration_note"].startswith("the val metrics and test metrics come from probabilities")
    assert f"- Note: {card['calibration_note']}" in markdown
    assert card["recipe"] == recipe and card["decision_threshold"]["value"] == recipe["threshold"]
    from_onnx = _predict(run, tmp_path / "onnx", f"ckpt={run['run'] / 'export'}")
    assert from_onnx["tta"] == "flip" and from_onnx["recipe"]["stale_export"] is None
    assert from_onnx["calibration"]["temperature"] == stored["temperature"]
    got, want = from_onnx["patients"][0], from_ckpt["patients"][0]
    assert np.abs(np.array(got["slice_probabilities"]) - np.array(want["slice_probabilities"])).max() < 1e-4
    for name, value in want["probabilities"].items():
        assert got["probabilities"][name] == pytest.approx(value, abs=1e-4)


@pytest.mark.slow
def test_a_recipe_of_another_checkpoint_is_refused_then_refitted(run, tmp_path):
    path = run["run"] / "recipe.json"
    stored = json.loads(path.read_text())
    calibration = run["run"] / "calibration.json"
    fitted = json.loads(calibration.read_text())
    # an option that contradicts the recipe: refused, naming both and the ways out
    with pytest.raises(RecipeError, match=r"tta=none contradicts .*recipe.json \(tta=flip"):
        _predict(run, tmp_path / "a", f"ckpt={run['run']}", "tta=none")
    # the recipe of another checkpoint (last.ckpt rewritten, or another epoch): refused, not exported
    write_sealed(path, {**stored, "checkpoint_sha256": "0" * 64})
    try:
        ckpt = find_checkpoint(run["run"])
        with pytest.raises(RecipeError, match=r"changed since .*recipe.json was recorded for it; re-run evaluate"):
            _predict(run, tmp_path / "b", f"ckpt={ckpt}")
        # the run itself is not exported without its recipe either
        refused = run_python("-m", "gliograde.export", str(run["run"]), "--output", str(tmp_path / "none"))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "changed since" in refused.stderr and not (tmp_path / "none").exists()
        exported = run_python("-m", "gliograde.export", str(ckpt), "--output", str(tmp_path / "export"))
        assert exported.returncode == 0, exported.stderr[-3000:]
        assert "Not exporting" in exported.stdout
        card = json.loads((tmp_path / "export" / "model_card.json").read_text())
        assert card["calibration"] is None and card["recipe"] is None
        # evaluate.py refits for its own checkpoint and TTA and records the recipe anew; on the
        # val split it says that these are the patients the temperature was fitted on
        result = run_python(
            "evaluate.py",
            f"run_dir={run['run']}",
            "split=val",
            "bootstrap=10",
            "gradcam_n=0",
            "calibration=temperature",
            f"output_dir={tmp_path / 'val'}",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        note = json.loads((tmp_path / "val" / "metrics.json").read_text())["calibration"]["note"]
        assert note.startswith("the temperature was fitted on 4 of these 4 patients")
        assert f"Note: {note}" in result.stdout
        refitted = json.loads(calibration.read_text())
        assert refitted["tta"] == "none" and refitted["checkpoint_sha256"] == stored["checkpoint_sha256"]
        recipe = json.loads(path.read_text())
        assert recipe["tta"] == "none" and recipe["temperature"] == refitted["temperature"]
        assert recipe["threshold"] == 0.5 and recipe["options"]["calibration"] == "temperature"
        assert "It replaces:" in result.stdout
        applied = _predict(run, tmp_path / "c", f"ckpt={run['run']}")
        assert applied["calibration"]["method"] == "temperature" and applied["tta"] == "none"
    finally:
        path.write_text(json.dumps(stored, indent=2))
        calibration.write_text(json.dumps(fitted, indent=2))


@pytest.mark.slow  # end to end: real commands
def test_hard_votes_cannot_be_calibrated(tmp_path):
    result = run_python(
        "evaluate.py", f"run_dir={tmp_path}", "aggregate=vote", "calibration=temperature"
    )
    assert result.returncode == 2
    assert "calibration=temperature cannot change hard votes" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("per_class, starred", [(4, True), (10, False)])
def test_a_temperature_fitted_on_few_patients_of_a_class_is_starred(tmp_path, capsys, per_class, starred):
    from gliograde.evaluation.calibration import calibrate, store_calibration
    from gliograde.evaluation.predict import Predictions, from_logits

    logits, slice_patient, _ = _synthetic(2.0, 2 * per_class, 2, seed=1)
    labels = np.array([0, 1] * per_class)
    names = [f"p{i}" for i in range(2 * per_class)]
    val = from_logits(
        Predictions(
            patient_ids=[names[p] for p in slice_patient],
            slice_index=np.zeros(len(slice_patient), dtype=int),
            labels=labels[slice_patient],
            probs=np.zeros((len(slice_patient), 2)),
            rows=np.arange(len(slice_patient)),
            patients=names,
            patient_probs=np.zeros((len(names), 2)),
            patient_labels=labels,
            slices_per_patient=np.full(len(names), 2),
            slice_patient=slice_patient,
            logits=logits,
        )
    )
    checkpoint = tmp_path / "epoch_000.ckpt"
    checkpoint.write_bytes(b"weights")
    record = store_calibration(tmp_path, calibrate(checkpoint, val, "none"))
    assert record["unreliable"] is starred
    assert json.loads((tmp_path / "calibration.json").read_text())["unreliable"] is starred
    assert (f"T={record['temperature']:.4f}*" in capsys.readouterr().out) is starred


@pytest.mark.slow
def test_a_temperature_of_another_aggregate_is_used_but_neither_stored_nor_the_recipe(run, tmp_path):
    """predict.py averages slices: a temperature fitted with aggregate=tumor_weighted must not
    replace the one the recipe names (nor leave a calibration.json without a recipe)."""
    copy = tmp_path / "run"
    shutil.copytree(run["run"], copy)
    records = {name: (copy / name).read_bytes() for name in ("calibration.json", "recipe.json")}
    result = run_python(
        "evaluate.py",
        f"run_dir={copy}",
        "bootstrap=10",
        "gradcam_n=0",
        "aggregate=tumor_weighted",
        "calibration=temperature",
        f"output_dir={tmp_path / 'weighted'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Note: with aggregate=tumor_weighted this evaluation's tta, threshold and temperature" in result.stdout
    assert {name: (copy / name).read_bytes() for name in records} == records
    metrics = json.loads((tmp_path / "weighted" / "metrics.json").read_text())
    assert metrics["calibration"]["method"] == "temperature" and metrics["calibration"]["file"] is None

"""python -m gliograde.export: ONNX equal to the checkpoint on real slices, a model card from the
run's own records, and predict.py running the export with onnxruntime alone; an export that is
tampered with is refused, one made before the run's recipe changed is named stale."""

from __future__ import annotations

import csv
import json
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from helpers.commands import run_python
from helpers.runs import tiny_run

from helpers.configs import compose_config

from gliograde.inference.inputs import from_folder
from gliograde.inference.models import ModelSourceError, OnnxModel, TorchModel, find_checkpoint, read_card
from gliograde.inference.runner import predict
from gliograde.inference.stream import load_patient
from gliograde.files.sealed import SealError

# trains a model in a `python train.py` subprocess
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Iterator[dict[str, Path]]:
    paths = tiny_run(tmp_path_factory)
    run = tmp_path_factory.mktemp("export") / "run"
    # export reads the best checkpoint: last.ckpt (134 MB) is not copied
    ignore = shutil.ignore_patterns("eval", "export", "tensorboard", "last.ckpt")
    shutil.copytree(paths["run"], run, ignore=ignore)
    evaluated = run_python("evaluate.py", f"run_dir={run}", "bootstrap=50", "gradcam_n=0")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = run_python("-m", "gliograde.export", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(run / "splits.csv", newline="") as fh:
        test = sorted(r["patient_id"] for r in csv.DictReader(fh) if r["split"] == "test")
    yield {**paths, "run": run, "test": test, "export_stderr": result.stderr}
    shutil.rmtree(run.parent, ignore_errors=True)


def test_onnx_gives_the_checkpoints_probabilities_on_real_slices(exported):
    model = TorchModel(find_checkpoint(exported["run"]))
    session = onnxruntime.InferenceSession(str(exported["run"] / "export" / "model.onnx"))
    for patient in exported["test"][:2]:
        files = from_folder(exported["cohort"] / patient, model.contract["naming"], {})
        images = load_patient(files, model.contract, resample=False).images
        expected = model.probabilities(images, batch_size=16)
        whole = session.run(None, {"image": images.astype(np.float32)})[0]  # the patient as one batch
        single = session.run(None, {"image": images[:1].astype(np.float32)})[0]
        assert whole.shape == expected.shape and np.abs(whole - expected).max() < 1e-4
        assert np.abs(single - expected[:1]).max() < 1e-4


def test_the_model_card_records_contract_cohort_metrics_and_commands(exported):
    run = exported["run"]
    card = json.loads((run / "export" / "model_card.json").read_text())
    stored = torch.load(find_checkpoint(run), map_location="cpu", weights_only=False)
    assert card["input_contract"] == stored["input_contract"]
    assert card["training"]["cohort"] == str(exported["cohort"])
    assert card["training"]["split_sizes"] == {"train": 8, "val": 4, "test": 4}
    assert card["training"]["patients_per_class"] == {"LGG": 8, "HGG": 8}
    evaluated = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert card["metrics"]["test"]["patient"] == evaluated["patient"]
    assert card["metrics"]["test"]["patient"]["auroc"]["ci_low"] is not None
    assert "val" in card["metrics"] and card["decision_threshold"]["value"] == evaluated["threshold"]
    assert card["commands"]["train"].startswith("python train.py data=brats2020")
    assert card["commands"]["evaluate (test)"].startswith("python evaluate.py run_dir=")
    assert "Research use only" in card["intended_use"]
    markdown = (run / "export" / "MODEL_CARD.md").read_text()
    auroc = evaluated["patient"]["auroc"]
    star = "*" if auroc["unreliable"] else ""  # 4 test patients: fewer than 10 of a class
    assert f"| auroc | {auroc['value']:.3f} | [{auroc['ci_low']:.3f}, {auroc['ci_high']:.3f}]{star} |" in markdown
    assert "tumor_topk (k=4)" in markdown and "python train.py" in markdown


def test_predict_runs_the_export_without_lightning_and_agrees(exported, tmp_path):
    run, patient = exported["run"], exported["test"][0]
    script = textwrap.dedent(
        f"""
        import json, sys
        from hydra import compose, initialize_config_dir
        from gliograde.inference.runner import predict
        with initialize_config_dir(config_dir="{Path(__file__).resolve().parents[1] / "conf"}", version_base="1.3"):
            cfg = compose("predict", overrides=["ckpt={run / "export"}", "input={exported["cohort"] / patient}",
                                                "output_dir={tmp_path / "onnx"}"])
        predict(cfg)
        assert "pytorch_lightning" not in sys.modules and "lightning" not in sys.modules
        """
    )
    onnx = run_python("-c", script)
    assert onnx.returncode == 0, onnx.stderr[-3000:]
    torch_run = run_python(
        "predict.py",
        f"ckpt={run}",
        f"input={exported['cohort'] / patient}",
        f"output_dir={tmp_path / 'ckpt'}",
    )
    assert torch_run.returncode == 0, torch_run.stderr[-3000:]
    a = json.loads((tmp_path / "onnx" / "predictions.json").read_text())
    b = json.loads((tmp_path / "ckpt" / "predictions.json").read_text())
    assert a["model_kind"] == "onnx" and b["model_kind"] == "checkpoint"
    pa, pb = a["patients"][0], b["patients"][0]
    assert pa["slice_index"] == pb["slice_index"] and pa["prediction"] == pb["prediction"]
    assert np.abs(np.array(pa["slice_probabilities"]) - np.array(pb["slice_probabilities"])).max() < 1e-4
    assert "gradcam" not in pa["figures"] and "slices" in pa["figures"]


def test_the_export_prints_no_exporter_deprecation_warning(exported):
    assert "TorchScript" not in exported["export_stderr"]
    assert "DeprecationWarning" not in exported["export_stderr"]


def _swap_output_rows(path: Path) -> None:
    """Rewrite the graph's last layer with its two class rows swapped: a graph that calls every
    HGG patient LGG and runs without an error."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path))
    swapped = 0
    for tensor in graph.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.shape[:1] == (2,) and values.ndim in (1, 2) and "fc" in tensor.name:
            tensor.CopyFrom(numpy_helper.from_array(values[::-1].copy(), tensor.name))
            swapped += 1
    assert swapped == 2, [t.name for t in graph.graph.initializer][-4:]  # fc weight and bias
    onnx.save(graph, str(path))


def test_a_tampered_export_is_refused(exported, tmp_path):
    source = exported["run"] / "export"
    card = read_card(source)
    assert card["model"]["onnx"]["onnx_sha256"] and card["sha256"]
    patient = exported["test"][0]

    swapped = tmp_path / "swapped"
    shutil.copytree(source, swapped)
    _swap_output_rows(swapped / "model.onnx")
    height, width = card["input_contract"]["image_size"]
    images = np.full((1, card["model"]["in_channels"], height, width), 0.5, dtype=np.float32)
    honest = onnxruntime.InferenceSession(str(source / "model.onnx")).run(None, {"image": images})[0]
    hostile = onnxruntime.InferenceSession(str(swapped / "model.onnx")).run(None, {"image": images})[0]
    assert np.allclose(hostile, honest[:, ::-1], atol=1e-5)  # the hostile graph would run, swapped
    with pytest.raises(ModelSourceError, match=r"model.onnx: its sha256 .* is not the model card's onnx_sha256"):
        OnnxModel(swapped)

    edited = tmp_path / "edited"
    shutil.copytree(source, edited)
    changed = json.loads((edited / "model_card.json").read_text())
    changed["input_contract"]["modalities"] = changed["input_contract"]["modalities"][::-1]
    changed["input_contract"]["classes"] = changed["input_contract"]["classes"][::-1]
    (edited / "model_card.json").write_text(json.dumps(changed, indent=2))
    with pytest.raises(SealError, match="model_card.json: its content does not match its sha256"):
        OnnxModel(edited)

    # as a user meets them: one line, exit 2, no traceback
    truncated = tmp_path / "truncated"
    shutil.copytree(source, truncated)
    data = (truncated / "model.onnx").read_bytes()
    (truncated / "model.onnx").write_bytes(data[: len(data) // 2])
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    text = (broken / "model_card.json").read_text()
    (broken / "model_card.json").write_text(text[: len(text) // 2])
    for folder, said in ((truncated, "is not the model card's onnx_sha256"), (broken, "not valid JSON")):
        result = run_python(
            "predict.py",
            f"ckpt={folder}",
            f"input={exported['cohort'] / patient}",
            f"output_dir={tmp_path / 'out'}",
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {folder}") and said in line and "re-export" in line


def _predict(*overrides: str) -> dict:
    return predict(compose_config("predict", list(overrides)))


def test_an_export_made_before_the_recipe_is_named_stale(exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported["run"], run)  # its export was made before any recipe
    patient = exported["cohort"] / exported["test"][0]
    evaluated = run_python(
        "evaluate.py", f"run_dir={run}", "bootstrap=10", "gradcam_n=0", "tta=flip", "calibration=temperature"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"Note: {run / 'export'} is stale: it applies tta=none" in evaluated.stdout
    recipe = json.loads((run / "recipe.json").read_text())

    # the stale export predicts with what it was made with, and says it is stale
    old = _predict(f"ckpt={run / 'export'}", f"input={patient}", f"output_dir={tmp_path / 'old'}")
    assert old["tta"] == "none" and old["calibration"]["method"] == "none"
    written = json.loads((tmp_path / "old" / "predictions.json").read_text())
    assert written["recipe"]["stale_export"].startswith(f"{run / 'export'} is stale")
    assert "temperature none" in written["recipe"]["stale_export"]
    # the checkpoint follows the recipe, and names the stale export too
    new = _predict(f"ckpt={run}", f"input={patient}", f"output_dir={tmp_path / 'new'}", "gradcam=false")
    assert new["tta"] == "flip" and new["calibration"]["temperature"] == recipe["temperature"]
    assert new["recipe"]["stale_export"] == written["recipe"]["stale_export"]
    checked = run_python("-m", "gliograde.export", str(run), "--check")
    assert checked.returncode == 1 and f"{run / 'export'} is stale" in checked.stdout

    again = run_python("-m", "gliograde.export", str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Replacing {run / 'export'} is stale" in again.stdout
    checked = run_python("-m", "gliograde.export", str(run), "--check")
    assert checked.returncode == 0 and "applies the run's current recipe" in checked.stdout
    card = read_card(run / "export")
    assert card["recipe"] == recipe
    fresh = _predict(f"ckpt={run / 'export'}", f"input={patient}", f"output_dir={tmp_path / 'fresh'}")
    assert fresh["tta"] == "flip" and fresh["recipe"]["stale_export"] is None
    got, want = fresh["patients"][0]["probabilities"], new["patients"][0]["probabilities"]
    assert all(abs(got[c] - want[c]) < 1e-4 for c in want)

"""python -m gliograde.export: ONNX equal to the checkpoint on real slices, a model card from the
run's own records, and predict.py running the export with onnxruntime alone."""

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

from gliograde.inference.inputs import from_folder
from gliograde.inference.models import TorchModel, find_checkpoint
from gliograde.inference.stream import load_patient

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
    yield {**paths, "run": run, "test": test}
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

"""The input contract: recorded in checkpoints and config.yaml, enforced by evaluate.py."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers.commands import run_python
from helpers.runs import tiny_run
from omegaconf import OmegaConf

import gliograde
from gliograde.contract.input_contract import ContractError, check_grid, enforce, from_config, grid_of


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    return tiny_run(tmp_path_factory)


def _evaluate(*args: str):
    return run_python("evaluate.py", "bootstrap=50", "gradcam_n=0", *args)


def _patient_probs(path: Path) -> dict[str, float]:
    with open(path, newline="") as fh:
        return {row["patient_id"]: float(row["probability"]) for row in csv.DictReader(fh)}


@pytest.mark.slow
def test_checkpoints_and_config_record_the_contract(run):
    expected_grid = {"shape": [40, 40, 20], "spacing": [1.0, 1.0, 1.0]}
    for ckpt in (run["run"] / "checkpoints").glob("*.ckpt"):
        contract = torch.load(ckpt, map_location="cpu", weights_only=False)["input_contract"]
        assert contract["modalities"] == ["flair", "t1ce", "t1", "t2"]
        assert contract["classes"] == ["LGG", "HGG"]
        assert contract["plane"] == "axial" and contract["slices"]["strategy"] == "tumor_topk"
        assert contract["slices"]["k"] == 4 and contract["image_size"] == [40, 40]
        assert {k: contract["grid"][k] for k in expected_grid} == expected_grid
        assert contract["preprocess"]["cache_dtype"] == "float16"
        assert (
            contract["preprocess"]["clip_percentiles"] is None and contract["preprocess"]["reorient"] is None
        )
        assert contract["version"] == gliograde.__version__
    saved = yaml.safe_load((run["run"] / "config.yaml").read_text())
    assert saved["input_contract"] == contract


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, key, model_value",
    [
        ("data.modalities=[t2]", "data.modalities", "[flair,t1ce,t1,t2]"),
        ("data.labels.classes=[HGG,LGG]", "data.labels.classes", "[LGG,HGG]"),
        ("data.slices.plane=coronal", "data.slices.plane", "axial"),
        ("data.preprocess.clip_percentiles=[1,99]", "data.preprocess.clip_percentiles", "None"),
    ],
)
def test_contradicting_overrides_are_refused_before_data_work(run, tmp_path, override, key, model_value):
    cache = tmp_path / "cache"
    result = _evaluate(
        f"run_dir={run['run']}", override, f"data.cache_dir={cache}", f"output_dir={tmp_path / 'o'}"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    given = override.split("=", 1)[1]
    assert f"{key}={given.replace(' ', '')}" in line.replace(".0", "")
    assert f"{key}={model_value}" in line
    assert not cache.exists() and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_reorder_uses_the_model_order_and_harmless_overrides_stay_allowed(run, tmp_path):
    plain = _evaluate(f"run_dir={run['run']}", f"output_dir={tmp_path / 'plain'}")
    assert plain.returncode == 0, plain.stderr[-2000:]
    reordered = _evaluate(
        f"run_dir={run['run']}",
        "data.modalities=[t2,t1,t1ce,flair]",
        "data.batch_size=3",
        f"output_dir={tmp_path / 'reordered'}",
    )
    assert reordered.returncode == 0, reordered.stderr[-2000:]
    assert "using the model's own order [flair,t1ce,t1,t2]" in reordered.stdout
    assert _patient_probs(tmp_path / "plain" / "patient_predictions.csv") == pytest.approx(
        _patient_probs(tmp_path / "reordered" / "patient_predictions.csv"), abs=1e-5
    )


@pytest.mark.slow
def test_a_run_from_before_contracts_falls_back_to_its_config(run, tmp_path):
    old = tmp_path / "old_run"
    # evaluate reads the best checkpoint: last.ckpt (134 MB) is not copied
    shutil.copytree(run["run"], old, ignore=shutil.ignore_patterns("eval", "tensorboard", "last.ckpt"))
    for ckpt in (old / "checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        del state["input_contract"]
        torch.save(state, ckpt)
    config = OmegaConf.load(old / "config.yaml")
    del config["input_contract"]
    OmegaConf.save(config, old / "config.yaml")
    result = _evaluate(f"run_dir={old}", "data.labels.classes=[HGG,LGG]")
    assert result.returncode == 2
    assert "data.labels.classes=[HGG,LGG] contradicts" in result.stderr


def test_a_single_modality_model_refuses_another_modality(cfg_train):
    data = OmegaConf.merge(cfg_train.data, {"modalities": ["flair"], "slices": {"strategy": "brain"}})
    contract = from_config(data)
    assert contract["modalities"] == ["flair"] and contract["grid"] is None
    given = OmegaConf.merge(data, {"modalities": ["t2"]})
    with pytest.raises(ContractError, match=r"data.modalities=\[t2\] .* data.modalities=\[flair\]"):
        enforce(contract, given, {"data.modalities"})
    four = OmegaConf.merge(data, {"modalities": ["flair", "t1ce", "t1", "t2"]})
    with pytest.raises(ContractError, match="data.modalities"):
        enforce(contract, four, set())


def test_grid_of_follows_reorientation_and_size_mismatch_is_refused():
    import numpy as np

    affine = np.diag([-1.0, -2.0, 3.0, 1.0])  # LPS, spacing 1 x 2 x 3
    assert grid_of(affine, (10, 20, 30), None) == {
        "shape": [10, 20, 30],
        "spacing": [1.0, 2.0, 3.0],
        "orientation": "LPS",
    }
    swapped = grid_of(affine, (10, 20, 30), "SAR")
    assert swapped["shape"] == [30, 20, 10] and swapped["spacing"] == [3.0, 2.0, 1.0]
    contract = {"grid": {"shape": [40, 40, 20]}, "image_size": [40, 40]}
    with pytest.raises(
        ContractError, match=r"\[48, 48, 24\] differ from the model's input grid \[40, 40, 20\]"
    ):
        check_grid(contract, (48, 48, 24), "cohort")

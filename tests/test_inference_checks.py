"""Refusals that come before any work: flip_rot on a model whose slices are not square (from its
contract, before a patient is decoded), an unreadable calibration.json; and what the reports
say about where a temperature and a model card's figures come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.configs import compose_config
from omegaconf import OmegaConf

from gliograde.contract.input_contract import from_config, image_size
from gliograde.data.errors import DataError
from gliograde.errors import ConfigError
from gliograde.evaluation.calibration import fitted_on_note
from gliograde.evaluation.report import format_report
from gliograde.evaluation.report_html import evaluation_page
from gliograde.inference.calibration import read_calibration, write_calibration
from gliograde.inference.models import TorchModel
from gliograde.inference.tta import check_tta_for
from gliograde.contract.model_card import build_card
from gliograde.contract.model_card_markdown import render_markdown
from gliograde.models.backbones import create_backbone

SAGITTAL_GRID = [40, 40, 20]  # (x, y, z): sagittal slices are [z, y] = 20x40


@pytest.fixture(scope="module")
def sagittal_run(tmp_path_factory) -> Path:
    """A run directory whose (untrained) ResNet18 checkpoint reads 20x40 sagittal slices; its
    config's data.root does not exist, so any data work would fail."""
    run = tmp_path_factory.mktemp("sagittal") / "run"
    overrides = [f"paths.output_dir={run}", f"data.root={run / 'no_cohort'}", "data.slices.plane=sagittal"]
    cfg = compose_config("train", overrides)
    OmegaConf.resolve(cfg)
    contract = from_config(cfg.data)
    contract["image_size"] = image_size(SAGITTAL_GRID, "sagittal")
    net = create_backbone("resnet18", len(contract["modalities"]), 2)
    hparams = {
        "backbone": "resnet18",
        "in_channels": len(contract["modalities"]),
        "num_classes": 2,
        "stem_stride": None,
        "class_names": contract["classes"],
    }
    (run / "checkpoints").mkdir(parents=True)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save(
        {"hyper_parameters": hparams, "state_dict": state, "input_contract": contract},
        run / "checkpoints" / "epoch_0.ckpt",
    )
    OmegaConf.save(cfg, run / "config.yaml")
    return run


def test_the_contracts_image_size_decides_flip_rot():
    with pytest.raises(ConfigError, match="tta=flip_rot .* 20x40: use tta=flip"):
        check_tta_for("flip_rot", {"image_size": [20, 40]})
    check_tta_for("flip", {"image_size": [20, 40]})
    check_tta_for("flip_rot", {"image_size": [24, 24]})  # a crop's square
    check_tta_for("flip_rot", {"image_size": None})  # unknown: the views check each batch
    with pytest.raises(ConfigError, match="tta='rot' must be one of"):
        check_tta_for("rot", {"image_size": None})


def _junk_patient(root: Path, naming: dict) -> Path:
    """A patient folder whose files are named right but are not NIfTI: decoding them fails."""
    folder = root / "P001"
    folder.mkdir(parents=True)
    for template in naming["modality_files"].values():
        (folder / f"{template.format(id='P001')}.nii").write_bytes(b"not a volume")
    return folder


def test_predict_refuses_flip_rot_before_decoding_a_patient(sagittal_run, tmp_path):
    from gliograde.inference.runner import predict

    model = TorchModel(sagittal_run / "checkpoints" / "epoch_0.ckpt")
    patient = _junk_patient(tmp_path / "in", model.contract["naming"])

    def options(tta: str, *more: str):
        return compose_config(
            "predict",
            [f"ckpt={sagittal_run}", f"input={patient}", f"output_dir={tmp_path / 'out'}", f"tta={tta}"]
            + list(more),
        )

    with pytest.raises(ConfigError, match="tta=flip_rot .* 20x40: use tta=flip or tta=none"):
        predict(options("flip_rot"))
    # the same patient (without a mask: graded by the brain rule) with tta=flip gets as far as
    # decoding, which would have failed first
    with pytest.raises(DataError, match="P001"):
        predict(options("flip", "mask_free=brain"))


def test_evaluate_refuses_flip_rot_before_reading_the_cohort(sagittal_run):
    from gliograde.evaluation.runner import evaluate

    cfg = compose_config("evaluate", [f"run_dir={sagittal_run}", "tta=flip_rot"])
    with pytest.raises(ConfigError, match="tta=flip_rot .* 20x40"):
        evaluate(cfg, [])
    # with tta=flip the cohort is looked for, and is not there
    with pytest.raises(DataError):
        evaluate(compose_config("evaluate", [f"run_dir={sagittal_run}", "tta=flip"]), [])


def test_an_unreadable_calibration_file_is_one_line_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "calibration.json"
    write_calibration(tmp_path, {"temperature": 1.5})
    assert read_calibration(tmp_path)["temperature"] == 1.5
    real = Path.read_bytes

    def denied(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ConfigError, match=rf"^{path}: cannot be read \(Permission denied\)"):
        read_calibration(tmp_path)


def _report(note: str | None) -> dict:
    calibration = {
        "method": "temperature",
        "temperature": 1.7,
        "file": "RUN/calibration.json",
        "val_patients": 4,
        "val_nll_before": 0.7,
        "val_nll_after": 0.6,
    }
    if note:
        calibration["note"] = note
    return {
        "run_dir": "RUN",
        "cohort": "COHORT",
        "checkpoint": "RUN/checkpoints/epoch_0.ckpt",
        "split": "val",
        "n_patients": 4,
        "n_slices": 16,
        "aggregate": "mean",
        "threshold": 0.5,
        "threshold_source": "evaluate.py threshold=0.5",
        "tta": "none",
        "calibration": calibration,
        "classes": ["LGG", "HGG"],
        "calls": {"LGG": 1, "HGG": 3},
        "note": "the cohort has no labels: predictions only",
    }


def test_metrics_on_the_patients_the_temperature_was_fitted_on_carry_a_note():
    record = {"val_patients": ["A", "B", "C", "D"]}
    assert fitted_on_note(record, ["E", "F"]) is None
    note = fitted_on_note(record, ["A", "B", "C", "D"])
    assert note.startswith("the temperature was fitted on 4 of these 4 patients")
    assert "2 of these 3" in fitted_on_note(record, ["A", "D", "E"])
    printed = format_report(_report(note))
    assert f"Note: {note}" in printed.splitlines()
    assert "Note:" not in format_report(_report(None))
    page = evaluation_page(_report(note), {})
    assert f"<p class=\"note\">Note: {note}</p>" in page


def _evaluated(run: Path, folder: str, tta: str, calibration: str, threshold: float) -> None:
    report = {
        "n_patients": 4,
        "ci_level": 0.95,
        "threshold": threshold,
        "tta": tta,
        "calibration": {"method": calibration},
        "patient": {"auroc": {"value": 0.75, "ci_low": 0.5, "ci_high": 1.0}},
    }
    (run / "eval" / folder).mkdir(parents=True, exist_ok=True)
    (run / "eval" / folder / "metrics.json").write_text(json.dumps(report))


def test_the_model_card_says_its_figures_are_uncalibrated_when_it_carries_a_temperature(
    sagittal_run, tmp_path
):
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = sagittal_run / "checkpoints" / "epoch_0.ckpt"
    model = TorchModel(checkpoint)
    _evaluated(run, "test", "none", "none", 0.4)
    record = {
        "temperature": 1.7,
        "tta": "flip",
        "aggregate": "mean",
        "val_patients": ["A", "B"],
        "nll_before": 0.7,
        "nll_after": 0.6,
    }
    card = build_card(model, checkpoint, run, record, onnx_max_abs_diff=0.0)
    assert card["calibration"] == record
    # without a recipe predict.py calls at 0.5, whatever threshold an evaluation chose (0.4 here)
    assert card["decision_threshold"] == {
        "value": 0.5,
        "source": "no recipe: predict.py calls the more probable class (0.5)",
    }
    assert card["metrics"]["test"]["tta"] == "none" and card["metrics"]["test"]["calibration"] == "none"
    note = card["calibration_note"]
    assert note.startswith("the test metrics come from probabilities without this")
    assert "evaluate.py calibration=temperature tta=flip" in note
    markdown = render_markdown(card)
    assert f"- Note: {note}" in markdown
    assert "### test (" in markdown and "; tta=none, calibration=none)" in markdown
    assert "- Decision threshold: 0.5 (no recipe: predict.py calls the more probable class (0.5))" in markdown

    # without a temperature there is nothing to warn about
    assert build_card(model, checkpoint, run, None, onnx_max_abs_diff=0.0)["calibration_note"] is None
    # figures from an evaluation with the carried temperature and its TTA: no note
    _evaluated(run, "test", "flip", "temperature", 0.45)
    assert build_card(model, checkpoint, run, record, onnx_max_abs_diff=0.0)["calibration_note"] is None

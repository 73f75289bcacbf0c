"""The classifier's optimizer, scheduler and loss defaults are written once (models.names):
every model config spells out the same values, and the module fills omissions from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gliograde.models.names import DEFAULT_LOSS, DEFAULT_OPTIMIZER, DEFAULT_SCHEDULER

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# the classifiers' configs (the segmenter's, model=unet, has defaults of its own)
MODELS = sorted(
    p.stem for p in (CONF_DIR / "model").glob("*.yaml") if "TumourSegmenter" not in p.read_text()
)
DEFAULTS = {"optimizer": DEFAULT_OPTIMIZER, "scheduler": DEFAULT_SCHEDULER, "loss": DEFAULT_LOSS}


def test_every_model_config_is_checked():
    assert "resnet18" in MODELS and len(MODELS) >= 6


@pytest.mark.parametrize("model", MODELS)
def test_model_config_spells_out_the_code_defaults(model):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
    for group, defaults in DEFAULTS.items():
        written = OmegaConf.to_container(cfg.model[group])
        # same keys and values, and the same types (1 is not 1.0 to a reader of the YAML either)
        assert written == dict(defaults), f"conf/model/{model}.yaml: model.{group}"
        assert {k: type(v) for k, v in written.items()} == {k: type(v) for k, v in defaults.items()}


def test_module_fills_omitted_settings_from_the_defaults():
    from gliograde.models.module import GradeClassifier

    model = GradeClassifier(optimizer={"lr": 0.5}, scheduler={"warmup_epochs": 3})
    assert model.optimizer_cfg == {**DEFAULT_OPTIMIZER, "lr": 0.5}
    assert model.scheduler_cfg == {**DEFAULT_SCHEDULER, "warmup_epochs": 3}
    assert model.label_smoothing == DEFAULT_LOSS["label_smoothing"]
    assert GradeClassifier().optimizer_cfg == dict(DEFAULT_OPTIMIZER)

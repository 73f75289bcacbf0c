"""The run's config.yaml with the model's input contract (checkpoints carry it too: see
``GradeClassifier.on_save_checkpoint``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from gliograde.contract.input_contract import KINDS, from_datamodule


def config_with_contract(cfg: DictConfig, datamodule: Any) -> str:
    """The resolved config as YAML, ending with the ``input_contract:`` block (a resumed run's
    config already holds one: it is replaced by the contract of the data as set up now)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("input_contract", None)
    task = str(plain.get("task") or "classify")
    kind = next(k for k, t in KINDS.items() if t == task)
    block = OmegaConf.to_yaml(OmegaConf.create({"input_contract": from_datamodule(datamodule, kind)}))
    return OmegaConf.to_yaml(OmegaConf.create(plain)) + block

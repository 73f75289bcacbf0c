"""Attach the input contract to what training writes: every checkpoint, and the run's config.yaml."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from gliograde.contract import from_datamodule


class InputContractRecorder(pl.Callback):
    """Adds ``checkpoint["input_contract"]``, built once from the DataModule, to every checkpoint."""

    def __init__(self, datamodule: Any):
        self.datamodule = datamodule
        self._contract: dict[str, Any] | None = None

    @property
    def contract(self) -> dict[str, Any]:
        if self._contract is None:
            self._contract = from_datamodule(self.datamodule)
        return self._contract

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint["input_contract"] = self.contract


def config_with_contract(cfg: DictConfig, datamodule: Any) -> str:
    """The resolved config as YAML, ending with the ``input_contract:`` block (a resumed run's
    config already holds one: it is replaced by the contract of the data as set up now)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("input_contract", None)
    block = OmegaConf.to_yaml(OmegaConf.create({"input_contract": from_datamodule(datamodule)}))
    return OmegaConf.to_yaml(OmegaConf.create(plain)) + block

"""Training from a composed config: data, model, callbacks, loggers, trainer; fit, then test
the best checkpoint; every run directory ends self-describing."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gliograde.atomic import write_text
from gliograde.config import build

log = logging.getLogger(__name__)


class NoGPUError(RuntimeError):
    """A GPU was asked for on a machine without one."""


def trainer_options(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.trainer`` as Trainer keyword arguments, with the ``gpus`` shortcut mapped.

    Lightning 2 removed ``Trainer(gpus=N)``; ``trainer.gpus=N`` still means
    ``accelerator=gpu, devices=N`` here, and fails at once without a GPU.
    """
    options = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(options, dict)
    options.pop("_target_", None)
    gpus = options.pop("gpus", None)
    if gpus not in (None, 0, "0"):
        available = torch.cuda.device_count()
        if available == 0:
            raise NoGPUError(
                f"trainer.gpus={gpus} asks for a GPU, but no GPU is available "
                "(torch.cuda.is_available() is False). Run on the CPU with trainer=cpu "
                "(or drop trainer.gpus)."
            )
        options["accelerator"] = "gpu"
        options["devices"] = gpus
    elif options.get("accelerator") == "gpu" and torch.cuda.device_count() == 0:
        raise NoGPUError(
            "trainer.accelerator=gpu, but no GPU is available (torch.cuda.is_available() is False). "
            "Run on the CPU with trainer=cpu."
        )
    return options


def run_dir(cfg: DictConfig) -> Path:
    """The run's output directory (Hydra's, or ``paths.output_dir``)."""
    return Path(cfg.paths.output_dir)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as ``cfg`` says; return the run's final metrics (also in metrics.json)."""
    trainer_kwargs = trainer_options(cfg.trainer)  # before any data work: fail fast
    out = run_dir(cfg)
    _check_writable(out)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")

    class_weights = None
    if cfg.model.get("loss", {}).get("class_weighted"):
        class_weights = datamodule.class_weights.tolist()
    model = build(
        cfg.model,
        in_channels=datamodule.num_channels,
        num_classes=len(datamodule.classes),
        class_names=list(datamodule.classes),
        class_weights=class_weights,
        monitor=cfg.monitor,
    )

    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None]
    trainer = L.Trainer(**trainer_kwargs, callbacks=callbacks, logger=loggers or False)

    write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    datamodule.write_splits(out / "splits.csv")

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = _numbers(trainer.callback_metrics)

    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            log.info("Testing the best checkpoint: %s", best)
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
        metrics.update(_numbers(trainer.callback_metrics))
        if best:
            metrics["best_checkpoint"] = best  # type: ignore[assignment]

    if trainer.is_global_zero:
        write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        _log_hparams(trainer, cfg, metrics)
        print(format_results(metrics, out))
    return metrics


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)):
            flat[key] = float(value)
    return flat


def _log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """Hyperparameters with the final metrics, so TensorBoard's HPARAMS tab compares runs."""
    params = {
        "model": cfg.model.backbone,
        "modalities": ",".join(cfg.data.modalities),
        "slices": cfg.data.slices.strategy,
        "plane": cfg.data.slices.plane,
        "lr": cfg.model.optimizer.lr,
        "weight_decay": cfg.model.optimizer.weight_decay,
        "batch_size": cfg.data.batch_size,
        "max_epochs": cfg.trainer.max_epochs,
        "seed": cfg.seed,
        "fold": -1 if cfg.data.fold is None else cfg.data.fold,
    }
    finite = {k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v) and "/" in k}
    for logger in trainer.loggers:
        if isinstance(logger, L.pytorch.loggers.TensorBoardLogger):
            logger.log_hyperparams(params, metrics=finite)
            logger.finalize("success")


def format_results(metrics: dict[str, Any], out: Path) -> str:
    """The patient-level test metrics and where the run lives."""
    rows = [(k, v) for k, v in sorted(metrics.items()) if k.startswith("test/patient_")]
    width = max((len(k) for k, _ in rows), default=0)
    lines = ["", "Patient-level test metrics:"]
    lines += [f"  {k:<{width}}  {v:.4f}" for k, v in rows] or ["  (no test metrics)"]
    lines.append(f"Run directory: {out}")
    return "\n".join(lines)


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RuntimeError(f"{path}: run directory is not writable ({exc.strerror})") from None

"""A finished run's hyperparameters and final metrics, as every logger records them.

TensorBoard gets them in its HPARAMS tab: the run's TensorBoard folder gets a run ``final`` of
its own, one HPARAMS session whose hyperparameters are the factors a sweep or an ablation varies
and whose metrics are the best checkpoint's validation (one point each, at the step of the best
epoch, so that it marks that epoch on each validation curve) and the test. No chart is made for
them alone. Other loggers (CSV, MLflow) get the same hyperparameters and the metrics as
``final/...``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, ListConfig, OmegaConf

HParam = str | float | int | bool

FINAL_RUN = "final"
"""The TensorBoard run (a folder inside the run's) that holds the session and its metrics."""

# name -> config key; the names are what HPARAMS, MLflow and the CSV logger show
FACTORS: dict[str, str] = {
    "task": "task",
    "model": "model.backbone",
    "modalities": "data.modalities",
    "plane": "data.slices.plane",
    "slices": "data.slices.strategy",
    "slices_k": "data.slices.k",
    "crop": "data.crop.mode",
    "crop_size": "data.crop.size",
    "context": "data.context",
    "sampler": "data.sampler",
    "augment": "data.augment.enabled",
    "lr": "model.optimizer.lr",
    "weight_decay": "model.optimizer.weight_decay",
    "batch_size": "data.batch_size",
    "max_epochs": "trainer.max_epochs",
    "seed": "seed",
    "folds": "data.folds",
    "fold": "data.fold",
}
# Command-line overrides these names already show (a group choice is shown by what it sets).
_COVERED = set(FACTORS.values()) | {"model", "task"}


def _applies(name: str, cfg: DictConfig) -> bool:
    """Whether a factor means anything for this run: no crop size without a crop, no k without
    top-k slices, no fold without folds."""
    data = cfg.get("data") or {}
    if name == "crop_size":
        return (data.get("crop") or {}).get("mode", "none") != "none"
    if name == "slices_k":
        return (data.get("slices") or {}).get("strategy") == "tumor_topk"
    if name in ("folds", "fold"):
        return data.get("folds") is not None
    return True


def _value(value: Any) -> HParam | None:
    """A hyperparameter value TensorBoard can show: lists joined by commas, None left out."""
    if isinstance(value, (ListConfig, list, tuple)):
        return ",".join(str(v) for v in value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def _how_it_runs(key: str) -> bool:
    """A key that changes how a run runs (devices, loggers, progress, the cache's place), not
    what it trains: the keys a resumed run may change."""
    from gliograde.training.resume import RESUMABLE_OVERRIDES

    return any(key == unit or key.startswith(f"{unit}.") for unit in RESUMABLE_OVERRIDES)


def run_hparams(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, HParam]:
    """The run's factors (see ``FACTORS``), those that apply to it, then every other key the
    command line set (``overrides``: Hydra's ``key=value`` strings) that changes what the run
    trains, under its own key."""
    params: dict[str, HParam] = {}
    for name, key in FACTORS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if name == "model" and value is None:
            value = "unet" if cfg.get("task") == "segment" else None
        if name == "task" and value is None:
            value = "classify"
        value = _value(value)
        if value is not None and _applies(name, cfg):
            params[name] = value
    for override in overrides or []:
        key, sep, text = override.lstrip("+~").partition("=")
        if not sep or key in _COVERED or key.startswith("hydra.") or _how_it_runs(key):
            continue
        selected = OmegaConf.select(cfg, key, default=None)
        group_choice = isinstance(selected, DictConfig) or (selected is None and "." not in key)
        value = text if group_choice else _value(selected)  # a group (experiment=ablation) by its name
        if value is not None:
            params[key] = value
    return params


def command_line_overrides() -> list[str]:
    """The running Hydra job's overrides (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The run's finite validation and test metrics (the best checkpoint's)."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if key.split("/", 1)[0] in ("val", "test")
        and not key.endswith("_best")  # the best-so-far curve's last point is val/<monitor> itself
        and isinstance(value, float)
        and math.isfinite(value)
    }


def record_run(
    trainer: pl.Trainer, params: Mapping[str, HParam], metrics: Mapping[str, float], best_step: int, name: str
) -> None:
    """Every logger gets ``params`` and ``metrics``; TensorBoard as one HPARAMS session named
    ``name`` (see the module's docstring), the others as ``final/...`` at the last step."""
    final = final_metrics(metrics)
    for logger in trainer.loggers:
        if isinstance(logger, pl.loggers.TensorBoardLogger):
            steps = {key: best_step if key.startswith("val/") else trainer.global_step for key in final}
            _tensorboard_session(Path(logger.log_dir) / FINAL_RUN, dict(params), final, steps, name)
        else:
            logger.log_hyperparams(dict(params))
            logger.log_metrics({f"final/{k}": v for k, v in final.items()}, step=trainer.global_step)
        logger.finalize("success")


def best_step(checkpoint: str | Path | None, default: int) -> int:
    """The step at which a checkpoint's validation was logged (where its points sit on the
    curves): validation runs after the optimizer step of its last batch and is logged before
    Lightning counts that step, so one less than the checkpoint's ``global_step``, wherever the
    checkpoint was saved. The checkpoint's tensors are mapped, not read."""
    if not checkpoint:
        return default
    import torch

    stored = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)
    return max(int(stored["global_step"]) - 1, 0)


def _tensorboard_session(
    folder: Path, params: dict[str, HParam], final: dict[str, float], steps: dict[str, int], name: str
) -> None:
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    def shown(key: str) -> str:
        return f"{key} (best checkpoint)" if key.startswith("val/") else key

    metric_infos = [
        api_pb2.MetricInfo(name=api_pb2.MetricName(group="", tag=key), display_name=shown(key))
        for key in sorted(final, key=lambda k: (not k.startswith("val/"), k))
    ]
    hparam_infos, values = [], {}
    for key, value in params.items():
        if isinstance(value, bool):
            kind, values[key] = api_pb2.DATA_TYPE_BOOL, struct_pb2.Value(bool_value=value)
        elif isinstance(value, (int, float)):
            kind, values[key] = api_pb2.DATA_TYPE_FLOAT64, struct_pb2.Value(number_value=float(value))
        else:
            kind, values[key] = api_pb2.DATA_TYPE_STRING, struct_pb2.Value(string_value=str(value))
        hparam_infos.append(api_pb2.HParamInfo(name=key, type=kind))
    now = time.time()
    experiment = api_pb2.Experiment(
        hparam_infos=hparam_infos, metric_infos=metric_infos, time_created_secs=now
    )
    # group_name: the run alone, even where another run has the same hyperparameters
    start = plugin_data_pb2.SessionStartInfo(hparams=values, group_name=name, start_time_secs=now)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=now)
    with SummaryWriter(log_dir=str(folder)) as writer:
        for tag, field, message in (
            ("_hparams_/experiment", "experiment", experiment),
            ("_hparams_/session_start_info", "session_start_info", start),
            ("_hparams_/session_end_info", "session_end_info", end),
        ):
            writer.file_writer.add_summary(_hparams_summary(tag, field, message))
        for key, value in final.items():
            writer.add_scalar(key, value, global_step=steps[key], new_style=True)


def _hparams_summary(tag: str, field: str, message: Any):
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData()
    getattr(data, field).CopyFrom(message)
    value = summary_pb2.Summary.Value(
        tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR
    )
    return summary_pb2.Summary(value=[value])

"""The schema of the composed config: the type, allowed values and range of every key a user
can set, checked right after composition and before any data work.

Defaults live in ``conf/`` only; the dataclasses here declare types. ``data.*`` reuses the
dataclasses of :mod:`gliograde.data.discovery.specs` (and the DataModule's own option checks), the
trainer group is checked against ``pytorch_lightning.Trainer``'s signature.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gliograde.config.type_check import MISSING, Range, _fields, _show, check, check_mapping
from gliograde.data.discovery.specs import (
    MODALITIES,
    AugmentSpec,
    CropSpec,
    LabelSpec,
    LayoutSpec,
    PreprocessSpec,
    SliceSpec,
    SplitSpec,
    SyntheticSpec,
)
from gliograde.errors import ConfigError
from gliograde.inference.tta import TTA_MODES
from gliograde.models.names import BACKBONES, OPTIMIZER_CLASSES
from gliograde.models.patient_scores import AGGREGATES


AtLeast1 = Annotated[int, Range(1)]
NonNegative = Annotated[int, Range(0)]
NonNegativeFloat = Annotated[float, Range(0)]
Fraction = Annotated[float, Range(0, 1)]


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DataSchema:
    """Every key of the ``data`` group: the arguments of ``GliomaDataModule``."""

    _target_: str
    root: str
    layout: LayoutSpec
    labels: LabelSpec
    require_labels: bool
    cache_dir: str
    modalities: tuple[Literal[MODALITIES], ...]  # type: ignore[valid-type]
    slices: SliceSpec
    crop: CropSpec
    context: NonNegative
    split: SplitSpec | None  # null: no split (an external cohort, evaluated whole)
    folds: AtLeast1 | None
    fold: NonNegative | None
    sampler: str
    augment: AugmentSpec
    preprocess: PreprocessSpec
    synthetic: SyntheticSpec | None
    batch_size: AtLeast1
    num_workers: NonNegative
    pin_memory: bool
    persistent_workers: bool
    transfer_dtype: str
    slab_margin: NonNegative
    device_cache: bool
    on_error: str
    seed: int
    progress: bool


# ---------------------------------------------------------------------------- model
@dataclass(frozen=True)
class OptimizerSchema:
    """``model.optimizer``: a torch optimizer's name and keyword arguments."""

    name: Literal[tuple(OPTIMIZER_CLASSES)]  # type: ignore[valid-type]
    lr: Annotated[float, Range(0, open_low=True)]
    weight_decay: Annotated[float, Range(0)]
    momentum: Annotated[float, Range(0)]
    nesterov: bool
    betas: tuple[Fraction, Fraction]
    eps: Annotated[float, Range(0, open_low=True)]


@dataclass(frozen=True)
class SchedulerSchema:
    """``model.scheduler``: linear warm-up then cosine decay, or a constant rate."""

    name: Literal["cosine", "none", "constant"] | None
    warmup_epochs: Annotated[float, Range(0)]
    min_lr_ratio: Fraction


@dataclass(frozen=True)
class LossSchema:
    """``model.loss``: cross-entropy options."""

    class_weighted: bool
    label_smoothing: Annotated[float, Range(0, 1, open_high=True)]


@dataclass(frozen=True)
class ModelSchema:
    """Every key of the ``model`` group (the rest of the classifier's arguments come from the data)."""

    _target_: str
    backbone: Literal[BACKBONES]  # type: ignore[valid-type]
    pretrained: str | None
    stem_stride: AtLeast1 | None
    optimizer: OptimizerSchema
    scheduler: SchedulerSchema
    loss: LossSchema
    compile: bool
    channels_last: bool


@dataclass(frozen=True)
class SegmenterLossSchema:
    """``model.loss`` of the segmenter: the weights of MONAI's DiceCELoss."""

    lambda_dice: Annotated[float, Range(0)]
    lambda_ce: Annotated[float, Range(0)]


@dataclass(frozen=True)
class SegmenterModelSchema:
    """Every key of ``model=unet``, the segmenter of ``task=segment``."""

    _target_: str
    features: tuple[AtLeast1, AtLeast1, AtLeast1, AtLeast1, AtLeast1, AtLeast1]
    dropout: Annotated[float, Range(0, 1, open_high=True)]
    optimizer: OptimizerSchema
    scheduler: SchedulerSchema
    loss: SegmenterLossSchema


SEGMENTER_TARGET = "gliograde.segmentation.module.TumourSegmenter"
TASKS = ("classify", "segment")


# -------------------------------------------------------------------------- trainer
_SET_BY_CODE = {"self", "logger", "callbacks", "plugins", "return"}


@functools.cache
def trainer_schema() -> dict[str, Any]:
    """Types of the ``trainer`` keys: ``pl.Trainer``'s arguments plus the ``gpus`` shortcut."""
    import pytorch_lightning as pl  # the slowest import of all: only when a trainer is checked

    hints = typing.get_type_hints(pl.Trainer.__init__, include_extras=True)
    schema = {name: hint for name, hint in hints.items() if name not in _SET_BY_CODE}
    schema["gpus"] = Union[int, str, list[int], None]
    return schema


# ---------------------------------------------------------------------- top levels
_SPLIT_NAMES = ("test", "val", "train", "all")
_MASK_FREE = ("brain", "middle", "range")


@dataclass(frozen=True)
class TrainSchema:
    """Top-level keys of ``train.yaml`` besides the groups."""

    task_name: str
    task: Literal[TASKS]  # type: ignore[valid-type]
    seed: int
    monitor: str
    monitor_mode: Literal["min", "max"]
    optimized_metric: str
    ckpt_path: str | None
    test: bool
    threshold: Annotated[float, Range(0, 1, open_low=True, open_high=True)] | Literal["youden"]


@dataclass(frozen=True)
class EvaluateSchema:
    """Top-level keys of ``evaluate.yaml`` besides ``data``."""

    run_dir: str
    ckpt: str
    split: Literal[_SPLIT_NAMES]  # type: ignore[valid-type]
    output_dir: str | None
    aggregate: Literal[AGGREGATES]  # type: ignore[valid-type]
    threshold: Annotated[float, Range(0, 1, open_low=True, open_high=True)] | Literal["youden"]
    tta: Literal[TTA_MODES]  # type: ignore[valid-type]
    calibration: Literal["none", "temperature"]
    allow_leak: bool
    mask_free: Literal[_MASK_FREE] | None  # type: ignore[valid-type]
    masks: Literal["use", "hidden"]
    segmenter: str | None
    min_tumour_ml: NonNegativeFloat
    bootstrap: NonNegative
    ci_level: Annotated[float, Range(0, 1, open_low=True, open_high=True)]
    gradcam_n: NonNegative
    batch_size: AtLeast1 | None
    seed: int
    progress: bool


@dataclass(frozen=True)
class PrepareSchema:
    """Top-level keys of ``prepare.yaml`` besides ``data``."""

    seed: int
    clean: bool


# Groups with no schema of their own: their nodes are ``_target_`` configs checked on use.
_FREE_GROUPS = {
    "train": ("callbacks", "logger", "paths"),
    "evaluate": (),
    "prepare": (),
}
_TOP = {"train": TrainSchema, "evaluate": EvaluateSchema, "prepare": PrepareSchema}


# --------------------------------------------------------------------- validation
def validate_config(cfg: DictConfig, config_name: str, deep: bool = True) -> None:
    """Check a composed ``train``/``evaluate``/``prepare`` config; raise one-line ``ConfigError``.

    ``deep=False`` skips the checks that need torch and Lightning imported (the trainer's
    arguments, the DataModule's cross-option checks), so a typo on the command line is answered
    at once; the entry point runs the deep checks too, before any data work.
    """
    top = _fields(_TOP[config_name])
    groups = {"data"} | ({"model", "trainer"} if config_name == "train" else set())
    allowed = set(top) | groups | set(_FREE_GROUPS[config_name]) | {"hydra"}
    for key in cfg:
        if key not in allowed:
            known = ", ".join(sorted(allowed - {"hydra"}))
            value = _show(_plain(cfg, key, key))
            raise ConfigError(f"{key}={value}: unknown key; the top level takes {known}")
    for key, hint in top.items():
        if key in cfg.keys():  # ``in cfg`` is False for a mandatory ``???`` value
            value = _plain(cfg, key, key)
            if value == MISSING:
                raise ConfigError(f"{key} is not set: add {key}=... to the command line")
            check(value, hint, key)
    if config_name == "evaluate":
        # Only data.* overrides live here; the run's saved data config is merged under them later.
        check(_plain(cfg, "data", "data"), DataSchema, "data", missing_ok=True)
    else:
        validate_data_config(cfg.data, deep)
    if config_name == "train":
        _check_task(cfg)
        validate_model_config(cfg.model)
        _check_test_split(cfg)
        if deep:
            validate_trainer_config(cfg.trainer)


def _check_task(cfg: DictConfig) -> None:
    """The model must be the task's kind, and a segmenter reads whole axial slices."""
    task = cfg.get("task", "classify")
    target = OmegaConf.select(cfg, "model._target_", default=None)
    model = OmegaConf.select(cfg, "model.backbone", default=None) or "unet"
    if task == "segment" and target != SEGMENTER_TARGET:
        raise ConfigError(
            f"model={model} is a classifier, but task=segment trains a segmenter: use model=unet"
        )
    if task != "segment" and target == SEGMENTER_TARGET:
        raise ConfigError(
            f"model={model} is a segmenter, but task={task} trains a classifier: add task=segment"
        )
    if task == "segment":
        for key, wanted in (("data.crop.mode", "none"), ("data.slices.plane", "axial")):
            value = OmegaConf.select(cfg, key, default=wanted)
            if value != wanted:
                raise ConfigError(
                    f"{key}={value} is not available with task=segment (whole axial slices): set {key}={wanted}"
                )


def _check_test_split(cfg: DictConfig) -> None:
    """A training that ends by testing needs test patients: ``data.split.test=0`` would fail
    only after the whole fit."""
    test = OmegaConf.select(cfg, "data.split.test", default=None)
    if cfg.get("test", True) and isinstance(test, (int, float)) and test == 0:
        raise ConfigError(
            "data.split.test=0 leaves no test patient, but training ends by testing the best "
            "checkpoint: set data.split.test above 0 (e.g. 0.15), or test=false to skip the test stage"
        )


def validate_data_config(node: DictConfig, deep: bool = True) -> None:
    """Check a ``data`` node (types, ranges, allowed values) without touching any data."""
    from gliograde.data.pipeline.options import DataOptions

    values = _container(node, "data")
    if values.get("root") == MISSING:
        raise ConfigError("data.root is not set: add data.root=PATH to the command line")
    check(values, DataSchema, "data")
    values.pop("_target_", None)
    DataOptions(**values)  # the DataModule's option checks and the specs' ranges; no I/O, no torch


def validate_model_config(node: DictConfig) -> None:
    """Check a ``model`` node (a classifier's, or the segmenter's)."""
    values = _container(node, "model")
    schema = SegmenterModelSchema if values.get("_target_") == SEGMENTER_TARGET else ModelSchema
    check(values, schema, "model")


def validate_trainer_config(node: DictConfig) -> None:
    """Check a ``trainer`` node against the Lightning Trainer's arguments."""
    values = _container(node, "trainer")
    check_mapping(values, trainer_schema(), "trainer")
    accelerator = values.get("accelerator")
    if isinstance(accelerator, str):
        from pytorch_lightning.accelerators import AcceleratorRegistry

        known = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
        if accelerator not in known:
            raise ConfigError(f"trainer.accelerator={accelerator!r} must be one of {known}")
    strategy = values.get("strategy")
    if isinstance(strategy, str):
        from pytorch_lightning.strategies import StrategyRegistry

        known = sorted({"auto", "ddp", "ddp_spawn", "fsdp", *StrategyRegistry.available_strategies()})
        if strategy not in known:
            raise ConfigError(f"trainer.strategy={strategy!r} must be one of {known}")


def _container(node: Any, where: str) -> dict[str, Any]:
    """A config node as plain Python, interpolations resolved; mandatory ``???`` kept as text."""
    if node is None:
        raise ConfigError(f"{where} is empty: choose a {where} config (e.g. {where}=...)")
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{where}={_show(node)} must be a mapping (choose a {where} config)")
    try:
        values = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {_one_line(err)}") from None
    assert isinstance(values, dict)
    return values


def _plain(cfg: DictConfig, key: str, where: str) -> Any:
    try:
        if OmegaConf.is_missing(cfg, key):
            return MISSING
        value = cfg[key]
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {_one_line(err)}") from None
    if isinstance(value, DictConfig):
        return _container(value, where)
    if OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _one_line(err: BaseException) -> str:
    first = str(err).strip().splitlines()
    return first[0] if first else type(err).__name__


__all__ = [
    "DataSchema",
    "EvaluateSchema",
    "ModelSchema",
    "PrepareSchema",
    "TrainSchema",
    "trainer_schema",
    "validate_config",
    "validate_data_config",
    "validate_model_config",
    "validate_trainer_config",
]



"""What an evaluation runs on, rebuilt from the run directory: contract, data and model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gliograde.contract import mask_free
from gliograde.config.compose import build
from gliograde.config.legacy_targets import current_targets
from gliograde.contract.input_contract import check_grid, check_model, enforce, read_checkpoint_contract
from gliograde.data.discovery.cohort import discover_cohort
from gliograde.data.discovery.specs import LabelSpec, LayoutSpec, from_mapping
from gliograde.evaluation.errors import EvaluationError
from gliograde.evaluation.predicted_masks import supply_tumours
from gliograde.segmentation.predicted import MIN_TUMOUR_ML
from gliograde.models.module import GradeClassifier
from gliograde.config.schema import validate_data_config


def load_run_config(run: Path) -> DictConfig:
    """The run's resolved config.yaml; refuses a folder that is not a run directory."""
    if not (run / "config.yaml").is_file():
        raise EvaluationError(
            f"{run}: not a run directory (no config.yaml); pass run_dir=logs/train/runs/..."
        )
    return current_targets(OmegaConf.load(run / "config.yaml"))


def load_contract(checkpoint: Path, run_cfg: DictConfig) -> dict[str, Any]:
    """The model's input contract: from its checkpoint, else the run's config.yaml."""
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    if "input_contract" not in stored and "input_contract" in run_cfg:
        return OmegaConf.to_container(run_cfg.input_contract, resolve=True)
    return read_checkpoint_contract(stored, run_cfg.data)


def data_config(
    cfg: DictConfig, run_cfg: DictConfig, overrides: list[str], contract: dict[str, Any]
) -> tuple[DictConfig, bool]:
    """The run's data config with the command line's ``data.*`` overrides, under the contract.

    Returns it and whether it names another cohort than the run's.
    """
    data_cfg = OmegaConf.merge(run_cfg.data, OmegaConf.from_dotlist(overrides).get("data", {}))
    validate_data_config(data_cfg)
    for note in enforce(contract, data_cfg, {item.split("=", 1)[0] for item in overrides}):
        print(note)
    other_cohort = Path(str(data_cfg.root)).resolve() != Path(str(run_cfg.data.root)).resolve()
    data_cfg.require_labels = False
    data_cfg.synthetic = None  # evaluate what is there; never generate
    if cfg.batch_size:
        data_cfg.batch_size = cfg.batch_size
    if cfg.split == "all":
        data_cfg.split = None  # the whole cohort, however small: nothing to split
        data_cfg.folds = data_cfg.fold = None
    return data_cfg, other_cohort


def refuse_missing_masks(cfg: DictConfig, data_cfg: DictConfig, contract: dict[str, Any]) -> list[str]:
    """The cohort's patients without a tumour mask (none with ``masks=hidden``: all), from its
    discovery alone (file names, before any cache work); refused in one line where the model's
    contract or ``aggregate=tumor_weighted`` needs a mask and neither ``mask_free`` nor a segmenter
    gives one (see :mod:`gliograde.contract.mask_free`)."""
    layout = from_mapping(LayoutSpec, OmegaConf.to_container(data_cfg.layout), "data.layout")
    labels = from_mapping(LabelSpec, OmegaConf.to_container(data_cfg.labels), "data.labels")
    quiet = logging.getLogger("gliograde.data")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the DataModule reports the cohort's warnings itself, once
    try:
        modalities = tuple(str(m) for m in data_cfg.modalities)
        cohort = discover_cohort(data_cfg.root, layout, labels, require_labels=False, modalities=modalities)
    finally:
        quiet.setLevel(level)
    hidden = str(cfg.get("masks", "use")) == "hidden"
    missing = [p.patient_id for p in cohort.patients if hidden or p.mask is None]
    if cfg.get("segmenter"):
        return missing  # the segmenter gives each of them a mask
    chosen = with_slices(contract, str(data_cfg.slices.strategy))
    mask_free.refuse_missing_masks(missing, chosen, cfg.get("mask_free"), str(cfg.aggregate), hidden)
    return missing


def with_slices(contract: dict[str, Any], strategy: str) -> dict[str, Any]:
    """The contract with the slice strategy this evaluation selects by (``data.slices`` may be
    overridden: it does not change what the model sees of a slice)."""
    return {**contract, "slices": {**contract["slices"], "strategy": strategy}}


def build_datamodule(
    data_cfg: DictConfig,
    contract: dict[str, Any] | None = None,
    mask_free: str | None = None,
    hide_masks: bool = False,
    segmenter: Any = None,
    show: bool = True,
    min_tumour_ml: float = MIN_TUMOUR_ML,
    segment_only: set[str] | None = None,
    evaluated_splits: set[str] | None = None,
):
    """Prepare and set up the datamodule of ``data_cfg``; its cache grid must fit the contract.

    ``mask_free`` is the slice strategy of a patient without a tumour mask where the contract
    needs one; ``hide_masks`` evaluates the cohort as if it had no masks (``masks=hidden``);
    ``segmenter`` gives every patient without a mask the mask it predicts (the datamodule's
    ``supplied`` says what it gave), before slices are selected.
    """
    datamodule = build(data_cfg)
    datamodule.prepared.mask_free = mask_free
    datamodule.prepared.hide_masks = hide_masks
    datamodule.prepared.tumours_to_come = segmenter is not None
    datamodule.prepared.checked_splits = evaluated_splits
    datamodule.prepare_data()
    if contract is not None:
        check_grid(contract, datamodule.cached.shape, str(datamodule.cohort.root))
    datamodule.supplied = None
    if segmenter is not None:
        assert contract is not None
        datamodule.supplied = supply_tumours(
            datamodule.prepared, segmenter, contract, show, min_tumour_ml, segment_only
        )
    datamodule.setup()
    return datamodule


def run_datamodule(run_cfg: DictConfig):
    """The run's own cohort and split, as it trained on them (its cache already exists)."""
    data_cfg = run_cfg.data.copy()
    data_cfg.synthetic = None
    return build_datamodule(data_cfg)


def load_model(checkpoint: Path, contract: dict[str, Any], device: torch.device) -> GradeClassifier:
    """The checkpoint's two-class model in eval mode on ``device``, checked against the contract."""
    model = GradeClassifier.load_from_checkpoint(checkpoint, map_location=device, weights_only=False)
    model.eval()
    classes = list(model.hparams.class_names)
    check_model(contract, int(model.hparams.in_channels), classes)
    if len(classes) != 2:
        raise EvaluationError(f"the report covers two classes; this model has {len(classes)}: {classes}")
    return model

"""Checks before an evaluation: options, the rebuilt split, and patients the model trained on."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from gliograde.data.discovery.identity import (
    content_matches,
    fingerprint_columns,
    id_collisions,
    recorded_training_patients,
)
from gliograde.data.batches.splits import read_splits, read_splits_table
from gliograde.models.patient_scores import AGGREGATES
from gliograde.evaluation.errors import EvaluationError
from gliograde.inference.tta import TTA_MODES
from gliograde.contract.mask_free import check_mask_free, check_masks

SPLITS = ("test", "val", "train", "all")
CALIBRATIONS = ("none", "temperature")

log = logging.getLogger(__name__)


def check_options(cfg: DictConfig) -> None:
    """Reject bad options before any data or model work."""
    if cfg.split not in SPLITS:
        raise EvaluationError(f"split={cfg.split!r} must be one of {list(SPLITS)}")
    if cfg.aggregate not in AGGREGATES:
        raise EvaluationError(f"aggregate={cfg.aggregate!r} must be one of {list(AGGREGATES)}")
    if cfg.tta not in TTA_MODES:
        raise EvaluationError(f"tta={cfg.tta!r} must be one of {list(TTA_MODES)}")
    if cfg.calibration not in CALIBRATIONS:
        raise EvaluationError(f"calibration={cfg.calibration!r} must be one of {list(CALIBRATIONS)}")
    if cfg.calibration == "temperature" and cfg.aggregate == "vote":
        raise EvaluationError(
            "calibration=temperature cannot change hard votes (aggregate=vote): use aggregate=mean or "
            "tumor_weighted, or calibration=none"
        )
    if str(cfg.threshold) != "youden":
        try:
            value = float(cfg.threshold)
        except ValueError:
            value = float("nan")
        if not 0 < value < 1:
            raise EvaluationError(f"threshold={cfg.threshold} must be a probability in (0, 1), or youden")
    check_mask_free(cfg.get("mask_free"))
    check_masks(cfg.get("masks", "use"))


def split_patients(datamodule, split: str) -> set[str]:
    """Ids of the usable patients in ``split`` of a set-up datamodule."""
    return {patient for patient, _, where in datamodule.split_table() if where == split}


def check_same_split(datamodule, splits_csv: Path) -> None:
    """On the run's own cohort, the rebuilt split must be the one the run trained with."""
    if not splits_csv.is_file():
        return
    saved = read_splits(splits_csv)
    differs = [p for p, _, s in datamodule.split_table() if p in saved and saved[p] != s]
    if differs:
        raise EvaluationError(
            f"{len(differs)} patient(s) (e.g. {differs[0]}) are in another split than in {splits_csv}: "
            "the data settings differ from the run's; evaluate with the run's own data.* values"
        )


def training_patients(checkpoint: Path, run: Path) -> tuple[pd.DataFrame | None, str]:
    """The patients ``checkpoint`` was trained on and where they were read: the table the
    checkpoint carries, else the ``splits.csv`` of the run it lies in (``RUN/checkpoints/``),
    else ``run``'s. (None, reason) when none is known.

    Raises EvaluationError for a checkpoint of another run that records neither.
    """
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    recorded = recorded_training_patients(stored)
    if recorded is not None:
        return recorded, f"the training split recorded in {checkpoint}"
    path = checkpoint.resolve()
    own = path.parent.parent if path.parent.name == "checkpoints" else None
    if own is not None and (own / "splits.csv").is_file():
        run = own
    elif not path.is_relative_to(run.resolve()):
        raise EvaluationError(
            f"ckpt={checkpoint} records no training patients and belongs to no run with a splits.csv, "
            "so the patients it was trained on are unknown: pass a checkpoint inside its run "
            "(RUN/checkpoints/X.ckpt)"
        )
    splits_csv = run / "splits.csv"
    if not splits_csv.is_file():
        return None, f"{splits_csv} is missing"
    saved = read_splits_table(splits_csv)
    return saved[saved["split"] == "train"], f"the training split of {splits_csv}"


def refuse_leak(
    datamodule, split: str, trained: pd.DataFrame | None, allow: bool, source: str = ""
) -> list[str]:
    """Patients the model was trained on (``trained``: rows of a splits table, see
    :func:`training_patients`) give no honest estimate: refuse unless allowed.

    A patient is matched by its images (under any id or path, by either fingerprint) where
    ``trained`` has fingerprints, else by id. A shared id with other images is another
    patient: a warning. Returns the warnings logged (for the report to repeat).
    """
    if trained is None:
        return []
    evaluated = split_patients(datamodule, split)
    table = datamodule.fingerprint_table()
    table = table[table["patient_id"].isin(evaluated)]
    said = []
    if fingerprint_columns(trained):
        leaked = [match.describe() for match in content_matches(table, trained)]
        collisions = sorted(id_collisions(table, trained))
        if collisions:
            said.append(
                f"{len(collisions)} patient(s) share their id with a training patient of the run but not its "
                f"images (id collisions, not leaks): {_first_names(collisions)}"
            )
    else:  # a run recorded before fingerprints: ids are all there is
        leaked = sorted(set(trained["patient_id"]) & evaluated)
    if leaked:
        message = (
            f"{len(leaked)} of the {len(evaluated)} patients to evaluate (e.g. {leaked[0]}) were in the "
            f"model's training split ({source or 'the run'})"
        )
        if not allow:
            raise EvaluationError(
                f"{message}: the figures would be inflated. Use split=test or val, or allow_leak=true"
            )
        said.append(f"{message} (allow_leak=true: the figures are inflated)")
    for line in said:
        log.warning("%s", line)
    return said


def _first_names(names: list[str], shown: int = 3) -> str:
    """``a, b, c and N more``: a list that keeps a warning to one short line."""
    head = ", ".join(names[:shown])
    return head if len(names) <= shown else f"{head} and {len(names) - shown} more"

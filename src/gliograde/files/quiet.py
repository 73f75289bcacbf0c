"""Silence library messages about things this project already handles, so that what remains on
the terminal is what a user must act on."""

from __future__ import annotations

import logging
import warnings

# Lightning: our callbacks config brings its own ModelSummary; an advertisement for a logger.
_LIGHTNING_NOISE = ("Trainer already configured with model summary", "Tip: For seamless cloud")
# DDP: the sampler's padding is counted once by the patient metrics (see models/patient_metrics).
_HANDLED_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*it is recommended to use `Trainer\(devices=1, num_nodes=1\)`.*",
    # torchmetrics' calibration error on a few hundred patients: a copy that costs nothing.
    r".*torch.searchsorted\(\): input value tensor is non-contiguous.*",
    # Batches are built in the main process on purpose (see data/datamodule.py).
    r".*does not have many workers which may be a bottleneck.*",
)


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_known_noise() -> None:
    """Drop Lightning's tips and handled warnings, and database-migration chatter (MLflow, Optuna)."""
    drop = _DropMessages(_LIGHTNING_NOISE)
    # Lightning logs through its rank-zero helpers' loggers, to its own handler or to the root's
    # (Hydra's console and file handlers): filter wherever the record can be written.
    for name in ("", "pytorch_lightning", "lightning_fabric"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _DropMessages) for f in handler.filters):
                handler.addFilter(drop)
    for pattern in _HANDLED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)

"""Hydra callbacks: fail in one line when the run or sweep directory cannot be written."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CheckOutputDirectory(Callback):
    """Before Hydra creates the run (or sweep) directory, check it can be created and written;
    otherwise print one line and exit 2 instead of Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(Path(str(config.hydra.run.dir)), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")


def _check(directory: Path, key: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        print(
            f"error: {directory}: cannot write the output directory ({exc.strerror or exc}); set {key}=...",
            file=sys.stderr,
        )
        sys.exit(2)

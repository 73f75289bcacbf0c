"""Hydra callbacks: fail in one line when the run or sweep directory cannot be written."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gliograde.atomic import check_writable_dir


class CheckOutputDirectory(Callback):
    """Before Hydra creates the run (or sweep) directory, check it can be created and written;
    otherwise print one line and exit 2 instead of Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(Path(str(config.hydra.run.dir)), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")


def _check(directory: Path, key: str) -> None:
    try:
        check_writable_dir(directory)
    except OSError as exc:
        print(
            f"error: {directory}: cannot write the output directory ({exc.strerror or exc}); set {key}=...",
            file=sys.stderr,
        )
        sys.exit(2)

"""Hydra callbacks: fail in one line when the run or sweep directory cannot be written, or
holds another run; end a sweep by listing its failed jobs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from gliograde.files.atomic import check_writable_dir
from gliograde.errors import GliogradeError
from gliograde.training.resume import refuse_existing_run


class CheckOutputDirectory(Callback):
    """Before Hydra creates the run (or sweep) directory, check it can be created and written;
    otherwise print one line and exit 2 instead of Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        _check(run_dir, "hydra.run.dir")
        # A fresh training run over another run: refused before Hydra rewrites that run's .hydra/.
        # DDP ranks after the first start once the first has written the run's config.
        if "ckpt_path" in config and not config.ckpt_path and rank_zero_only.rank == 0:
            try:
                refuse_existing_run(run_dir)
            except GliogradeError as err:
                print(f"error: {err}", file=sys.stderr)
                sys.exit(2)

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


class SweepReport(Callback):
    """After a sweep, list its failed jobs (one line each) and exit 2 (only user errors) or 1;
    a sweep whose jobs all finished ends as before."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from gliograde.sweeps.jobs import quiet_optuna_objective_noise

        quiet_optuna_objective_noise()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from gliograde.sweeps.jobs import exit_with_report

        exit_with_report(Path(str(config.hydra.sweep.dir)))

"""DDP under Hydra: start each job's ranks with that job's own overrides and directory.

Lightning starts ranks 1..N-1 by re-running the script with the original command line plus
``hydra.run.dir``. In a sweep (``-m``) that command line is the whole sweep, so every rank
would run every job, in directories of its own. Here the ranks get the current job's task
overrides, its output directory, and single-run mode instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def launch_ranks_as_this_job() -> None:
    """Route Lightning's subprocess launcher through :func:`job_command` (idempotent)."""
    from pytorch_lightning.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = job_command


def job_command(local_rank: int) -> tuple[Sequence[str], str]:
    """Command and working directory that rerun the current Hydra job as rank ``local_rank``."""
    import __main__
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    config = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, os.path.abspath(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    # A sweeper's own group (e.g. hparams_search=optuna) would turn the rank into a sweep.
    command += [o for o in config.overrides.task if not o.lstrip("+~").startswith("hparams_search")]
    command += [
        f'hydra.run.dir="{config.runtime.output_dir}"',
        f"hydra.job.name={config.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
        "hydra.mode=RUN",
    ]
    return command, get_original_cwd()

"""A ``-m`` sweep's jobs: a failed job is recorded in its folder and the sweep goes on; at the
end the sweep lists its failed jobs.

Hydra's launchers stop a sweep at the first job that exits (a user error exits 2), and its
sweepers raise the first failure once a batch is done, so one bad job would hide what the
others found. Here a job of a sweep never raises: its failure is written to
``JOB_DIR/failed.json`` (what ``python -m gliograde.summarize`` lists) and the job returns no
objective, which an Optuna study counts as a failed trial before it goes on.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gliograde.files.atomic import write_text
from gliograde.errors import USER_ERROR_EXIT, GliogradeError

T = TypeVar("T")

FAILED_MARKER = "failed.json"
"""Written into a job's folder when the job failed: ``{"job", "kind", "message"}``."""

USER, BUG, NO_OBJECTIVE = "user error", "bug", "no objective"


def record_failure(job_dir: Path, job: str, kind: str, message: str) -> None:
    """Write the job's failure marker (atomically), creating the folder if needed."""
    job_dir.mkdir(parents=True, exist_ok=True)
    record = {"job": job, "kind": kind, "message": message}
    write_text(job_dir / FAILED_MARKER, json.dumps(record) + "\n")


def read_failure(job_dir: Path) -> dict[str, str] | None:
    """The job's failure record, or None when it has none (an unreadable one still counts)."""
    path = job_dir / FAILED_MARKER
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        return {"job": job_dir.name, "kind": BUG, "message": f"{path} is unreadable"}
    return {
        "job": str(record.get("job", job_dir.name)),
        "kind": str(record.get("kind", BUG)),
        "message": str(record.get("message", "")),
    }


def job_folders(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders (numbered, as ``hydra.sweep.subdir`` names them), in job order."""
    if not sweep_dir.is_dir():
        return []
    folders = [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(folders, key=lambda p: int(p.name))


def failures(sweep_dir: Path) -> list[dict[str, str]]:
    """The failure records of the sweep's jobs, in job order."""
    return [record for job in job_folders(sweep_dir) if (record := read_failure(job)) is not None]


def run_sweep_job(task: Callable[[], T], hydra_cfg: Any) -> T | None:
    """Run one job of a sweep (``hydra_cfg``: its ``HydraConfig``); on failure record it, say so
    in one line and return None.

    A user error (a ``GliogradeError``, which the entry points turn into exit status 2) keeps
    its one line; any other exception is a bug: its traceback is printed, then the sweep goes
    on. Ctrl-C still stops the whole sweep.
    """
    job_dir, job = Path(hydra_cfg.runtime.output_dir), str(hydra_cfg.job.num)
    value: T | None = None
    try:
        value = task()
    except SystemExit as stop:
        if stop.code in (0, None):
            raise
        cause = stop.__context__
        if stop.code == USER_ERROR_EXIT and isinstance(cause, GliogradeError):
            _failed(job_dir, job, USER, str(cause).replace("\n", " "))
        else:
            _failed(job_dir, job, BUG, f"exited with status {stop.code}")
    except Exception as err:  # a bug in one job: shown in full, and the sweep goes on
        traceback.print_exc()
        _failed(job_dir, job, BUG, f"{type(err).__name__}: {err}".replace("\n", " "))
    if is_optuna(hydra_cfg) and last_trial_of_failed_study(
        job_dir.parent, int(hydra_cfg.job.num), hydra_cfg.sweeper.get("n_trials")
    ):
        print("error: no trial of the Optuna study finished with an objective", file=sys.stderr)
        exit_with_report(job_dir.parent)
    return value


def _failed(job_dir: Path, job: str, kind: str, message: str) -> None:
    record_failure(job_dir, job, kind, message)
    print(
        f"job {job} failed ({kind}); the sweep goes on (recorded in {job_dir / FAILED_MARKER})",
        file=sys.stderr,
    )


def missing_objective(metric: str) -> None:
    """Say in one line that the run logged no ``metric``; in an Optuna study the trial is
    recorded as failed (the sweeper marks it failed, and the study goes on)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    hydra_cfg = HydraConfig.get()
    job = str(hydra_cfg.job.num)
    why = (
        f"job {job}: {metric} was never logged (e.g. a validation split holding one class), "
        "so the sweep gets no objective from it"
    )
    if is_optuna(hydra_cfg):
        record_failure(Path(hydra_cfg.runtime.output_dir), job, NO_OBJECTIVE, f"{metric} was never logged")
        why += "; Optuna marks this trial failed and the study goes on"
    print(f"warning: {why}", file=sys.stderr)


def is_optuna(hydra_cfg: Any) -> bool:
    """Whether the sweep is an Optuna study (whose sweeper reads each job's objective)."""
    return "optuna" in str(hydra_cfg.sweeper.get("_target_", ""))


def report(sweep_dir: Path) -> tuple[str, int] | None:
    """``(lines, exit status)`` listing the sweep's failed jobs, or None when none failed.

    The status is 2 when every failure is a user error, else 1.
    """
    failed = failures(sweep_dir)
    if not failed:
        return None
    total = len(job_folders(sweep_dir))
    lines = [f"job {r['job']} failed ({r['kind']}): {r['message']}" for r in failed]
    rest = "" if len(failed) == total else "; the others ran to the end"
    lines.append(
        f"{len(failed)} of {total} jobs failed in {sweep_dir}{rest} "
        f"(python -m gliograde.summarize {sweep_dir} lists them all)"
    )
    code = USER_ERROR_EXIT if all(r["kind"] in (USER, NO_OBJECTIVE) for r in failed) else 1
    return "\n".join(lines), code


def exit_with_report(sweep_dir: Path) -> None:
    """Print the failed jobs and exit with :func:`report`'s status; return when none failed."""
    result = report(sweep_dir)
    if result is not None:
        text, code = result
        print(text, file=sys.stderr)
        sys.exit(code)


def last_trial_of_failed_study(sweep_dir: Path, job_num: int, n_trials: Any) -> bool:
    """True in the last trial of an Optuna study when no trial has finished with an objective:
    the study would then end in a traceback ("No trials are completed yet")."""
    if not isinstance(n_trials, int) or job_num + 1 < n_trials:
        return False
    jobs = job_folders(sweep_dir)
    return len(jobs) >= n_trials and all(read_failure(job) is not None for job in jobs)


class _NoObjectiveNoise(logging.Filter):
    """Drops the Optuna sweeper's lines about a trial that returned no objective: each such
    trial has already said why in one line, and the sweeper's "Return value must be
    float-castable. Got 'None'" reads like a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Got 'None'" not in record.getMessage()


def quiet_optuna_objective_noise() -> None:
    """Install :class:`_NoObjectiveNoise` on the Optuna sweeper's logger (once)."""
    logger = logging.getLogger("hydra_plugins.hydra_optuna_sweeper._impl")
    if not any(isinstance(f, _NoObjectiveNoise) for f in logger.filters):
        logger.addFilter(_NoObjectiveNoise())

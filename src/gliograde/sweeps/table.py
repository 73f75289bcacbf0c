"""A multirun's jobs as one table: which jobs finished or failed, what each one overrode, which
keys the sweep varied, and each finished job's patient-level metrics with intervals.

Used by ``python -m gliograde.summarize``; writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from gliograde.errors import GliogradeError
from gliograde.evaluation.intervals import patient_intervals
from gliograde.evaluation.metrics import METRICS
from gliograde.models.patient_scores import table_scores
from gliograde.sweeps.jobs import FAILED_MARKER, NO_OBJECTIVE, read_failure
from gliograde.files.tables import read_table

STAGES = ("val", "test")
DEFAULT_MONITOR = "val/patient_auroc"
FINISHED, NO_OBJECTIVE_STATUS, FAILED, UNFINISHED = "finished", "no objective", "failed", "unfinished"


class SummaryError(GliogradeError, ValueError):
    """The folder is not a finished sweep."""


@dataclass
class Job:
    """One job folder of a sweep and how it ended."""

    path: Path
    status: str  # FINISHED, NO_OBJECTIVE_STATUS (finished, but its trial failed), FAILED, UNFINISHED
    message: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.status in (FINISHED, NO_OBJECTIVE_STATUS)


def _is_job_folder(path: Path) -> bool:
    if not path.is_dir() or path.name.startswith("."):
        return False
    markers = ("metrics.json", FAILED_MARKER, ".hydra")
    return path.name.isdigit() or any((path / m).exists() for m in markers)


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder below ``sweep_dir`` (numbered, or holding a run's or Hydra's files), in
    job order; at least one must have finished (metrics.json and config.yaml)."""
    if not sweep_dir.is_dir():
        raise SummaryError(
            f"{sweep_dir}: no such directory; pass a multirun directory (logs/train/multiruns/...)"
        )
    folders = [p for p in sweep_dir.iterdir() if _is_job_folder(p)]
    folders.sort(key=lambda p: (len(p.name), p.name))
    jobs = []
    for folder in folders:
        finished = (folder / "metrics.json").is_file() and (folder / "config.yaml").is_file()
        record = read_failure(folder)
        if record is not None and record["kind"] == NO_OBJECTIVE and finished:
            jobs.append(Job(folder, NO_OBJECTIVE_STATUS, record["message"]))
        elif record is not None:
            jobs.append(Job(folder, FAILED, f"{record['kind']}: {record['message']}"))
        elif finished:
            jobs.append(Job(folder, FINISHED))
        else:
            why = "no metrics.json: killed, still running, or failed unrecorded"
            jobs.append(Job(folder, UNFINISHED, why))
    if not any(job.finished for job in jobs):
        failed = f" ({sum(1 for j in jobs if not j.finished)} job folders without metrics)" if jobs else ""
        raise SummaryError(
            f"{sweep_dir}: no finished jobs (folders with metrics.json and config.yaml){failed}"
        )
    return jobs


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The finished jobs' folders below ``sweep_dir``."""
    return [job.path for job in find_jobs(sweep_dir) if job.finished]


# ------------------------------------------------------------------------------ overrides
def _config_file(job: Path) -> Path | None:
    for path in (job / "config.yaml", job / ".hydra" / "config.yaml"):
        if path.is_file():
            return path
    return None


def job_overrides(jobs: list[Path]) -> list[dict[str, str]]:
    """Each job's overrides as ``{key: value}`` (values as written): its
    ``.hydra/overrides.yaml`` when every finished job has one (a job without one, e.g. killed
    before Hydra wrote it, has none), else the resolved config keys whose values differ between
    the jobs."""
    files = [job / ".hydra" / "overrides.yaml" for job in jobs]
    finished = [(job / "metrics.json").is_file() for job in jobs]
    if all(f.is_file() for f, done in zip(files, finished) if done):
        result = []
        for f in files:
            items = (OmegaConf.to_container(OmegaConf.load(f)) or []) if f.is_file() else []
            pairs = (str(item).split("=", 1) for item in items if "=" in str(item))
            result.append({k.lstrip("+~"): v for k, v in pairs})
        return result
    flat = []
    for job in jobs:
        config = _config_file(job)
        flat.append(_flatten(OmegaConf.to_container(OmegaConf.load(config))) if config else {})
    keys = sorted({k for f in flat for k in f if not k.startswith(("paths.", "hydra.", "input_contract."))})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat if f}) > 1]
    return [{k: _text(f.get(k)) for k in varying if k in f} for f in flat]


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def swept_keys(overrides: list[dict[str, str]], declared: list[str] | None = None) -> list[str]:
    """Override keys whose value is not the same in every job, plus the keys the sweep's command
    line swept (``declared``), even where only one of their jobs finished."""
    keys = sorted({k for o in overrides for k in o})
    return [k for k in keys if len({o.get(k) for o in overrides}) > 1 or k in (declared or [])]


def declared_sweep_keys(sweep_dir: Path) -> list[str]:
    """The keys the sweep's command line swept (``a=1,2``, ``range(...)``, the basic sweeper's
    ``params``) as Hydra recorded them in ``multirun.yaml``; empty where it is absent or
    unreadable. (An Optuna study writes no such record, and its search space may be fixed
    by the command line, so its swept keys are those whose values differ.)"""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        recorded = OmegaConf.load(path)
        task = [str(item) for item in OmegaConf.select(recorded, "hydra.overrides.task", default=[]) or []]
        params = OmegaConf.select(recorded, "hydra.sweeper.params", default=None) or {}
        fixed = {o.get_key_element().lstrip("+~") for o in OverridesParser.create().parse_overrides(task)}
        keys = [str(k) for k in params if str(k) not in fixed]
        for override in OverridesParser.create().parse_overrides(task):
            if override.is_sweep_override():
                keys.append(override.get_key_element().lstrip("+~"))
    except (OSError, HydraException, OmegaConfBaseException, ValueError):
        return []
    return keys


def check_one_sweep(sweep_dir: Path, jobs: list[Job], overrides: list[dict[str, str]]) -> None:
    """Refuse folders that one sweep did not make: every job of a Hydra sweep overrides the same
    keys (it is the same command line with other values)."""
    has_record = [(job.path / ".hydra" / "overrides.yaml").is_file() for job in jobs]
    if not all(has for has, job in zip(has_record, jobs) if job.finished):
        return  # the overrides are config differences, not command lines
    recorded = [(job, o) for job, o, has in zip(jobs, overrides, has_record) if has]
    if len(recorded) < 2:
        return
    (first_job, first_overrides), *others = recorded
    first = set(first_overrides)
    for job, keys in others:
        if set(keys) != first:
            only_first, only_other = sorted(first - set(keys)), sorted(set(keys) - first)
            detail = "; ".join(
                f"only job {name} sets {', '.join(missing)}"
                for name, missing in ((first_job.name, only_first), (job.name, only_other))
                if missing
            )
            raise SummaryError(
                f"{sweep_dir}: jobs {first_job.name} and {job.name} are not from one sweep ({detail}); "
                "summarize one multirun folder at a time (logs/train/multiruns/DATE_TIME)"
            )


# ------------------------------------------------------------------------------ metrics
def read_patient_predictions(path: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``(classes, patients, labels, positive-class probabilities, scores)`` of the labelled
    patients in a ``predictions_<stage>.csv``; scores are what AUROC ranks (the log-odds, see
    :mod:`gliograde.models.patient_scores`)."""
    table = read_table(path)
    prob_columns = [str(c) for c in table.columns if str(c).startswith("prob_")]
    classes = [c[len("prob_") :] for c in prob_columns]
    if len(classes) != 2:
        raise SummaryError(f"{path}: the summary covers two classes; found columns {prob_columns}")
    missing = [c for c in ("patient_id", "label") if c not in table]
    if missing:
        raise SummaryError(f"{path}: missing column(s) {missing}; expected a patient predictions file")
    rows = table[table["label"] != ""].to_dict("records")
    unknown = [r["label"] for r in rows if r["label"] not in classes]
    if unknown:
        raise SummaryError(f"{path}: label {unknown[0]!r} is not one of {classes}")
    labels = np.array([classes.index(r["label"]) for r in rows], dtype=int)
    try:
        probs = np.array([float(r[prob_columns[1]]) for r in rows], dtype=float)
        scores = table_scores(rows, prob_columns[1])
    except ValueError:
        raise SummaryError(f"{path}: column {prob_columns[1]} or score holds a value that is not a number") from None
    return classes, [r["patient_id"] for r in rows], labels, probs, scores


def _read_metrics(job: Path) -> dict[str, Any]:
    path = job / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except ValueError:
        raise SummaryError(f"{path}: not valid JSON; the job did not finish writing it") from None
    if not isinstance(metrics, dict):
        raise SummaryError(f"{path}: expected an object of metric names and values")
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def job_row(
    job: Job,
    overrides: dict[str, str],
    monitor: str,
    resamples: int,
    level: float,
    classes_seen: dict[str, tuple[str, list[str]]],
) -> dict[str, Any]:
    """One table row: the job, its overrides and status, and (finished) its metrics.

    ``classes_seen`` maps a class list to the first job that had it: jobs that classify
    different things are refused.
    """
    row: dict[str, Any] = {"job": job.name, **overrides, "status": job.status, "error": job.message}
    if not job.finished:
        row["run_dir"] = str(job.path)
        return row
    metrics = _read_metrics(job.path)
    for stage in STAGES:
        path = job.path / f"predictions_{stage}.csv"
        if path.is_file():
            classes, _, labels, probs, scores = read_patient_predictions(path)
            _same_classes(classes, job.name, classes_seen)
            intervals = patient_intervals(labels, probs, level=level, resamples=resamples, scores=scores)
            row[f"{stage}/patient_count"] = len(labels)
            for name, entry in intervals.items():
                key = f"{stage}/patient_{name}"
                row[key] = entry["value"]
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = entry["ci_low"], entry["ci_high"]
                row[f"{key}_unreliable"] = entry["unreliable"]
                row[f"{key}_ci_note"] = entry.get("ci_note")  # why an interval has no bounds
        else:  # point values only, as training logged them
            for name in METRICS:
                row[f"{stage}/patient_{name}"] = metrics.get(f"{stage}/patient_{name}")
    for key, value in metrics.items():  # e.g. the best-so-far values, or a slice-level monitor
        if ("/patient_" in key or key == monitor) and key not in row:
            row[key] = value
    row["run_dir"] = str(job.path)
    return row


def _monitor(config: Path) -> tuple[str, str]:
    """``(monitor, monitor_mode)`` of a job's config.yaml, read with libyaml where it can be: a
    run's whole config through OmegaConf took a tenth of the summary of a 24-job sweep."""
    import yaml

    loaded = yaml.load(config.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    pair = (str(loaded.get("monitor", DEFAULT_MONITOR)), str(loaded.get("monitor_mode", "max")))
    if "${" in "".join(pair):  # an interpolation: OmegaConf resolves it
        c = OmegaConf.load(config)
        pair = (str(c.get("monitor", DEFAULT_MONITOR)), str(c.get("monitor_mode", "max")))
    return pair


def _same_classes(classes: list[str], job: str, seen: dict[str, tuple[str, list[str]]]) -> None:
    if not seen:
        seen["first"] = (job, classes)
        return
    first_job, first = seen["first"]
    if classes != first:
        raise SummaryError(
            f"job {job} classifies {classes} but job {first_job} {first}: not one sweep's jobs; "
            "summarize one multirun folder at a time"
        )


def sweep_table(
    sweep_dir: str | Path,
    resamples: int = 1000,
    level: float = 0.95,
    on_job: Callable[[Job], object] | None = None,
) -> tuple[pd.DataFrame, list[str], str, str]:
    """``(table, swept keys, monitor, monitor mode)``: one row per job, finished jobs best
    first, then the others in job order (``status`` and ``error`` say how they ended).

    ``on_job`` is called before each job is scored (to show progress).
    """
    sweep_dir = Path(sweep_dir)
    jobs = find_jobs(sweep_dir)
    overrides = job_overrides([job.path for job in jobs])
    check_one_sweep(sweep_dir, jobs, overrides)
    finished = [job for job in jobs if job.finished]
    monitors = {_monitor(job.path / "config.yaml") for job in finished}
    if len(monitors) > 1:
        raise SummaryError(
            f"{sweep_dir}: the jobs monitor different metrics {sorted(monitors)}, so no one order ranks "
            "them; summarize sweeps that share monitor and monitor_mode"
        )
    monitor, mode = monitors.pop()
    classes_seen: dict[str, tuple[str, list[str]]] = {}
    rows = []
    for job, override in zip(jobs, overrides):
        if on_job is not None:
            on_job(job)
        rows.append(job_row(job, override, monitor, resamples, level, classes_seen))
    table = pd.DataFrame(rows)
    rank = {FINISHED: 0, NO_OBJECTIVE_STATUS: 0, FAILED: 1, UNFINISHED: 2}
    table["_rank"] = table["status"].map(rank)
    if monitor in table:
        table[monitor] = pd.to_numeric(table[monitor], errors="coerce")
        ascending = [True, mode == "min"]
        table = table.sort_values(["_rank", monitor], ascending=ascending, na_position="last", kind="stable")
    else:
        table = table.sort_values("_rank", kind="stable")
    table = table.drop(columns="_rank").reset_index(drop=True)
    return table, swept_keys(overrides, declared_sweep_keys(sweep_dir)), monitor, mode

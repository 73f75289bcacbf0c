"""A `python -m gliograde.prepare` killed mid-build leaves no worker running and no partial cache
that a rerun keeps; SIGTERM removes its partial folder itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cohorts import make_datamodule
from helpers.commands import REPO

from gliograde.data.caching.cache_clean import partial_key
from gliograde.data.discovery.specs import MODALITIES

pytestmark = [
    pytest.mark.slow,  # kills a real `python -m gliograde.prepare` with SIGKILL and SIGTERM
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="reads /proc; workers die with their parent by prctl"
    ),
]

PATIENTS = 150  # tiny volumes, but enough of them that the build lasts well past startup


@pytest.fixture(scope="module")
def many_patients(tiny_cohort_master, tmp_path_factory) -> Path:
    """PATIENTS patients, all hard links to one tiny patient's files (little disk, much work)."""
    base = tmp_path_factory.mktemp("many")
    source = base / "source"
    source.mkdir()
    parts = (*MODALITIES, "seg")
    for part in parts:  # private copies: linking changes the ctime (and cache key) of the master
        name = f"BraTS20_Training_001_{part}.nii"
        (source / part).write_bytes((tiny_cohort_master / "BraTS20_Training_001" / name).read_bytes())
    root = base / "cohort"
    rows = ["Grade,BraTS_2020_subject_ID"]
    for index in range(1, PATIENTS + 1):
        pid = f"BraTS20_Training_{index:03d}"
        (root / pid).mkdir(parents=True)
        for part in parts:
            os.link(source / part, root / pid / f"{pid}_{part}.nii")
        rows.append(f"{'LGG' if index % 3 == 0 else 'HGG'},{pid}")
    (root / "name_mapping.csv").write_text("\n".join(rows) + "\n")
    return root


def _arguments(root: Path, cache_dir: Path) -> list[str]:
    return [
        "-m",
        "gliograde.prepare",
        "data=brats2020",
        f"data.root={root}",
        f"data.cache_dir={cache_dir}",
        "data.preprocess.workers=2",
        "data.progress=false",
    ]


def _start(root: Path, cache_dir: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, *_arguments(root, cache_dir)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )


def _state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a live process; None once it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in "ZX" else (fields[0], int(fields[1]))


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (state := _state(int(entry.name))) and state[1] == parent:
            found.append(int(entry.name))
    return found


def _wait_for(condition: Callable[[], object], what: str, limit: float = 120.0) -> object:
    """Poll ``condition`` until it returns something true; fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


def _mid_build(proc: subprocess.Popen, cache_dir: Path, log: Path) -> tuple[Path, list[int]]:
    """Wait until the build's partial folder exists and both pool workers run."""

    def ready():
        if proc.poll() is not None:
            output = log.read_text()
            pytest.fail(f"prepare ended (exit {proc.returncode}) before it was caught mid-build: {output}")
        partials = list(cache_dir.glob(".*.partial-*")) if cache_dir.is_dir() else []
        workers = _children(proc.pid)
        return (partials[0], workers) if len(partials) == 1 and len(workers) >= 2 else None

    return _wait_for(ready, "the partial cache folder and two workers")


def _entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock"))


def test_sigkill_leaves_no_worker_and_the_rerun_removes_the_partial_build(many_patients, tmp_path):
    cache_dir, log = tmp_path / "cache", tmp_path / "prepare.log"
    proc = _start(many_patients, cache_dir, log)
    partial, workers = _mid_build(proc, cache_dir, log)
    proc.kill()
    assert proc.wait(60) == -signal.SIGKILL
    _wait_for(lambda: not any(_state(pid) for pid in workers), "the workers to die with their parent", 30)
    assert partial.is_dir()  # a killed process cannot clean up: the next run must

    rerun = make_datamodule(many_patients, cache_dir, preprocess={"workers": 2})
    rerun.prepare_data()  # the same key: its lock is held by this process, not the dead one
    assert partial_key(partial.name) == rerun.cached.directory.name
    assert len(rerun.cached.patient_ids) == PATIENTS
    assert _entries(cache_dir) == [rerun.cached.directory.name]


def test_sigterm_stops_the_workers_and_removes_the_partial_build(many_patients, tmp_path):
    cache_dir, log = tmp_path / "cache", tmp_path / "prepare.log"
    proc = _start(many_patients, cache_dir, log)
    partial, workers = _mid_build(proc, cache_dir, log)
    proc.terminate()
    assert proc.wait(60) == 128 + signal.SIGTERM
    output = log.read_text()
    assert "Traceback" not in output and "interrupted" in output and str(partial) in output
    assert not any(_state(pid) for pid in workers)
    assert _entries(cache_dir) == []

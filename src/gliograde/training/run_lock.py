"""A training's lock in its run directory: held while it runs, so that clean never removes a run in
progress."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


RUN_LOCK = ".training.lock"
"""Held (shared) by a training in its run directory while it runs."""


@contextmanager
def training_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock while the block runs: clean refuses to remove it meanwhile. A
    shared lock, so that the processes of one training (DDP ranks) may all hold it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / RUN_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def busy_runs(place: Path) -> list[Path]:
    """Run directories below ``place`` whose training is still running (holds its lock)."""
    busy = []
    for folder, _, files in os.walk(place):  # does not follow links
        if RUN_LOCK not in files:
            continue
        fd = os.open(Path(folder) / RUN_LOCK, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy.append(Path(folder))
        finally:
            os.close(fd)
    return busy

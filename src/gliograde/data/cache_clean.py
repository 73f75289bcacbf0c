"""Remove caches a cohort no longer uses: superseded keys and abandoned partial builds."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from filelock import Timeout

from gliograde.data.cache import (
    DamagedCacheError,
    key_lock,
    read_meta,
    remove_cache,
    remove_abandoned_builds,
    tree_bytes,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Removed:
    """One folder removed from a cache directory, why, and the bytes it held."""

    path: Path
    reason: str
    bytes: int


def clean_cache_dir(cache_dir: str | Path, current_key: str, root: str | Path) -> list[Removed]:
    """Remove abandoned partial builds and the caches of ``root`` other than ``current_key``.

    A cache is superseded when its meta.json records the same cohort root under another key
    (the files or the preprocessing settings changed since). Never touched: the current
    cache, any build in progress (its lock is held), caches of other cohorts, and folders
    whose meta.json cannot be read (their cohort is unknown).
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    removed = [
        Removed(path, "abandoned partial build", size)
        for path, size in remove_abandoned_builds(cache_dir)
    ]
    root = os.path.abspath(root)
    for folder in sorted(p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name == current_key:
            continue
        try:
            meta = read_meta(folder)
        except DamagedCacheError:
            continue
        if meta.get("cohort_root") != root or meta.get("key") != folder.name:
            continue
        size = _remove_unless_locked(cache_dir, folder)
        if size is not None:
            removed.append(Removed(folder, "superseded cache", size))
    return removed


def _remove_unless_locked(cache_dir: Path, folder: Path) -> int | None:
    lock = key_lock(cache_dir, folder.name)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None  # a process is rebuilding this key right now
    try:
        size = tree_bytes(folder)
        log.info("Removing superseded cache %s", folder)
        remove_cache(folder, folder.name)
        return size
    finally:
        lock.release()

"""Cache housekeeping: build locks, partial builds, and removing caches a cohort no longer uses
(superseded keys and abandoned partial builds)."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from gliograde.data.cache_meta import DamagedCacheError, read_meta

log = logging.getLogger(__name__)

PARTIAL_MARK = ".partial-"


def key_lock(cache_dir: Path, key: str) -> FileLock:
    """The lock a process holds while it builds (or removes) the cache ``key``."""
    return FileLock(str(cache_dir / f".{key}.lock"))


def partial_key(name: str) -> str | None:
    """The key of a partial build's folder name (``.<key>.partial-<id>``), else None."""
    if not name.startswith(".") or PARTIAL_MARK not in name:
        return None
    return name[1:].split(PARTIAL_MARK)[0]


def partial_path(cache_dir: Path, key: str) -> Path:
    """A new folder name for a build (or removal) of ``key`` in progress."""
    return cache_dir / f".{key}{PARTIAL_MARK}{uuid.uuid4().hex[:8]}"


def remove_cache(directory: Path, key: str) -> None:
    """Delete the cache folder of ``key``; the caller holds its lock.

    It is renamed to a partial build's name first, so a half-removed cache never looks
    complete, and a removal cut short is cleaned up like any abandoned build.
    """
    doomed = partial_path(directory.parent, key)
    os.replace(directory, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_abandoned_builds(cache_dir: Path, held_key: str | None = None) -> list[tuple[Path, int]]:
    """Delete partial builds left by killed builders; return each one removed with its bytes.

    A partial build is abandoned when nobody holds its key's lock. The caller's own key
    (``held_key``, whose lock it already holds) is not locked a second time: a second lock
    object on the same file would wait on the caller itself, so its partials are abandoned
    by definition (only the lock holder builds).
    """
    removed = []
    for partial in sorted(cache_dir.glob(f".*{PARTIAL_MARK}*")):
        key = partial_key(partial.name)
        if key is None or not partial.is_dir():
            continue
        if key == held_key:
            removed.append((partial, _remove_partial(partial)))
            continue
        lock = key_lock(cache_dir, key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # being built right now
        try:
            removed.append((partial, _remove_partial(partial)))
        finally:
            lock.release()
    return removed


def _remove_partial(partial: Path) -> int:
    size = tree_bytes(partial)
    log.info("Removing an abandoned partial cache: %s", partial)
    shutil.rmtree(partial, ignore_errors=True)
    return size


def tree_bytes(directory: Path) -> int:
    """Bytes of the files under ``directory`` (links not followed)."""
    total = 0
    for folder, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total


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

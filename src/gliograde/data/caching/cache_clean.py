"""Cache housekeeping: build locks, reader locks, partial builds, and removing caches a cohort
no longer uses (superseded generations and abandoned partial builds)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from gliograde.data.caching.cache_meta import CACHE_FORMAT, DamagedCacheError, read_meta

log = logging.getLogger(__name__)

PARTIAL_MARK = ".partial-"


def key_lock(cache_dir: Path, key: str) -> FileLock:
    """The lock a process holds while it builds (or removes) the cache ``key``."""
    return FileLock(str(cache_dir / f".{key}.lock"))


class ReaderHold:
    """A shared ``flock`` on a cache folder, held while this process reads the cache; released
    by ``release`` or when the object is collected. Copies in other processes hold nothing."""

    def __init__(self, fd: int | None = None):
        self._release = weakref.finalize(self, os.close, fd) if fd is not None else None

    def release(self) -> None:
        if self._release is not None:
            self._release()

    def __reduce__(self):
        return (ReaderHold, ())


def hold_for_reading(directory: Path) -> ReaderHold:
    """Take a shared lock on the cache folder ``directory`` (waiting while a removal of it
    holds the exclusive one); works in a read-only place, since only the folder is opened.

    Raises DamagedCacheError when the folder is missing, or was removed while waiting.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        raise DamagedCacheError("damaged cache: folder missing", where=directory) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError as exc:
            # A file system without locks: the cache is read, but clean cannot see the reader.
            log.warning("Cannot lock %s for reading (%s): clean=true cannot see this reader", directory, exc)
        try:
            current = os.stat(directory)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is None or (current.st_ino, current.st_dev) != (held.st_ino, held.st_dev):
            raise DamagedCacheError("damaged cache: removed while it was being opened", where=directory)
    except BaseException:
        os.close(fd)
        raise
    return ReaderHold(fd)


@contextmanager
def unread(directory: Path) -> Iterator[bool]:
    """Yield whether no process holds ``directory`` for reading; while True, none can start."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a reader, or no locks here: readers cannot be ruled out
            yield False
            return
        yield True
    finally:
        os.close(fd)


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
    """One folder removed from a cache directory (or, ``in_use``, kept although superseded),
    why, and the bytes it held."""

    path: Path
    reason: str
    bytes: int
    in_use: bool = False


def clean_cache_dir(
    cache_dir: str | Path, current_key: str, root: str | Path, generation: str | None = None
) -> list[Removed]:
    """Remove abandoned partial builds and the superseded caches of ``root``.

    A cache of ``root`` (as its meta.json records) is superseded when it was built by another
    cache format, or from another ``generation`` (see ``cache.cache_generation``: the files or
    the preprocessing settings changed since); ``generation=None`` supersedes every cache of
    ``root`` but ``current_key``. A cache of the current generation with another slab serves
    runs of other slice strategies (a brain cache serves tumour runs) and is kept. Never
    touched: the current cache, any build in progress (its lock is held), a cache a process is
    reading (returned with ``in_use``), caches of other cohorts, and folders whose meta.json
    cannot be read (their cohort is unknown).
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
            meta = read_meta(folder, any_format=True)
        except DamagedCacheError:
            continue
        if meta.get("cohort_root") != root or meta.get("key") != folder.name:
            continue
        current = meta.get("format") == CACHE_FORMAT and meta.get("generation") == generation
        if generation is not None and current:
            continue
        outcome = _remove_unless_locked(cache_dir, folder)
        if outcome is not None:
            size, removed_now = outcome
            reason = "superseded cache" if removed_now else "superseded cache, kept: another process reads it"
            removed.append(Removed(folder, reason, size, in_use=not removed_now))
    return removed


def _remove_unless_locked(cache_dir: Path, folder: Path) -> tuple[int, bool] | None:
    """Remove ``folder`` unless it is being built (None) or read (its bytes, False)."""
    lock = key_lock(cache_dir, folder.name)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None  # a process is rebuilding this key right now
    try:
        size = tree_bytes(folder)
        with unread(folder) as free:
            if not free:
                log.warning("Keeping superseded cache %s: another process is reading it", folder)
                return size, False
            log.info("Removing superseded cache %s", folder)
            remove_cache(folder, folder.name)
        return size, True
    finally:
        lock.release()

"""A folder made read-only or full in-process, for tests that run as root (root ignores modes).

Every Python-level way to write under the folder (``open`` for writing, ``os.open`` with write
flags, ``mkdir``, ``replace``/``rename``, and for a read-only folder also ``unlink``/``rmdir``)
raises the OSError the kernel would give, naming the path.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path

import pytest

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _under(path, folder: Path) -> bool:
    if isinstance(path, int):  # a file descriptor
        return False
    try:
        resolved = Path(os.fsdecode(path)).absolute()
    except TypeError:
        return False
    return resolved == folder or folder in resolved.parents


def refuse_writes(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int = errno.EROFS) -> list[str]:
    """Make writes under ``folder`` fail with ``code`` (EROFS: read-only, ENOSPC: full); returns
    the list of paths whose writing was refused, filled as it happens."""
    folder = Path(folder).absolute()
    refused: list[str] = []
    full = code == errno.ENOSPC  # a full disk still renames and removes files

    def fail(path) -> None:
        refused.append(os.fsdecode(path))
        if full:  # as write() reports it: no file name
            raise OSError(code, os.strerror(code))
        raise OSError(code, os.strerror(code), os.fsdecode(path))

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and _under(file, folder):
            fail(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS and _under(path, folder):
            fail(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guard(name: str, *, always: bool = True):
        real = getattr(os, name)

        def guarded(*args, **kwargs):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if always and any(_under(a, folder) for a in paths):
                fail(next(a for a in paths if _under(a, folder)))
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, guarded)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    guard("mkdir")
    for name in ("replace", "rename", "unlink", "remove", "rmdir"):
        guard(name, always=not full)
    return refused


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime (ns): equal before and after means
    nothing there was written, added or removed."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def modes_enforced(tmp_path: Path) -> bool:
    """Whether a folder's modes stop this process from writing there (not for root, which
    ignores them, unless it runs without CAP_DAC_OVERRIDE)."""
    probe = tmp_path / ".modes-probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "x").write_bytes(b"")
    except PermissionError:
        return True
    else:
        (probe / "x").unlink()
        return False
    finally:
        probe.chmod(0o755)
        probe.rmdir()

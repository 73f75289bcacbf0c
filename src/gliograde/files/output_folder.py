"""Output folders that appear whole or not at all.

A command writes into a hidden sibling of its output folder (``.<name>.partial-...``), which is
renamed into place only when everything is written and removed when anything fails. Whether the
place can be written is tried before the long work starts, and a full or read-only disk, met
then or later, is one line naming the folder (or file) instead of a traceback.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import secrets
import shutil
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gliograde.errors import GliogradeError

# Errors of the place written to, not of the program: a full disk or quota, a read-only mount, modes.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})
ATOMIC_TEMPORARY = ".*.tmp-*"  # the temporary names of gliograde.files.atomic and the PNG writers
_PROBE_BYTES = 4096  # a probe with content: on a full disk an empty file can still be created


class OutputError(GliogradeError):
    """An output cannot be written where it was asked for (full disk, read-only place, foreign folder)."""


def is_disk_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError of the place written to (full, read-only, no permission)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def reason(exc: OSError) -> str:
    """``exc`` in words, e.g. ``No space left on device``."""
    return exc.strerror or str(exc) or type(exc).__name__


def probe_write(directory: str | Path) -> None:
    """Write and remove a small file in the existing ``directory``; raise its OSError if that fails.

    ``os.access`` is not asked: root passes it on a read-only mode, and it cannot see every
    read-only mount.
    """
    probe = Path(directory) / f".write-test-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(probe, "xb") as fh:
            fh.write(b"\0" * _PROBE_BYTES)
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def writable(directory: str | Path) -> bool:
    """Whether a file can be written in the existing ``directory``, by trying it."""
    try:
        probe_write(directory)
    except OSError:
        return False
    return True


@contextmanager
def output_errors(target: str | Path, label: str, advice: str) -> Iterator[None]:
    """Turn a full or read-only disk met inside the block into one line: ``label`` (naming
    ``target``), the reason and ``advice``. A failing file elsewhere (e.g. an input) is named."""
    try:
        yield
    except OSError as exc:
        if not is_disk_error(exc):
            raise
        name = str(exc.filename or "")
        if name and not _belongs(Path(name), Path(target)):
            raise OutputError(f"{name}: {reason(exc)}; {label} was not written") from None
        raise OutputError(f"{label}: cannot be written ({reason(exc)}); {advice}") from None


def _belongs(path: Path, target: Path) -> bool:
    """Whether ``path`` is ``target``, a temporary sibling of it (``.<name>.*``) or inside one."""
    hidden = f".{target.name}."
    return path == target or any(
        part.parent == target.parent and part.name.startswith(hidden) for part in (path, path.parent)
    )


def check_file_target(path: str | Path, option: str) -> None:
    """Refuse, before any work, a file output whose folder is missing or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option}={path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise OutputError(f"{option}={path}: no such folder {path.parent}")
    if not writable(path.parent):
        raise OutputError(f"{option}={path}: the folder {path.parent} cannot be written; choose another file")


def check_folder_target(target: str | Path, option: str = "output_dir", own: Iterable[str] = ("*",)) -> None:
    """Refuse, before any long work and without leaving anything behind, an output folder that
    :func:`staged_folder` could not fill: a file, a folder holding what the command does not
    write (other than ``own`` patterns), or a place that cannot be written."""
    target = _absolute(target, option)
    _check_existing(target, option, tuple(own))
    place = next(folder for folder in target.absolute().parents if folder.exists())
    if not place.is_dir():
        raise OutputError(f"{option}={target}: {place} is a file, not a folder")
    try:
        probe_write(place)
    except OSError as exc:
        if not is_disk_error(exc):
            raise
        raise OutputError(
            f"{option}={target}: cannot write in {place} ({reason(exc)}); choose another {option}"
        ) from None


@contextmanager
def staged_folder(
    target: str | Path, option: str = "output_dir", own: Iterable[str] = ("*",)
) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to write into; rename it to ``target`` when the block
    ends, remove it (and any parent folder made for it) when the block raises.

    ``own`` are the name patterns the command writes: an existing ``target`` holding anything
    else is refused (its content is replaced as a whole). Before yielding, the sibling is made
    and a probe written in it, so a read-only or full place is one :class:`OutputError` naming
    ``target`` before the work starts; a full disk met later is one too.
    """
    target = _absolute(target, option)
    own = tuple(own)
    _check_existing(target, option, own)
    made = _missing_parents(target)
    partial = None
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_abandoned(target)
            partial = _make_partial(target)
            probe_write(partial)
        except OSError as exc:
            if not is_disk_error(exc):
                raise
            raise OutputError(
                f"{option}={target}: cannot write there ({reason(exc)}); choose another {option}"
            ) from None
        advice = f"nothing was kept there: free space or choose another {option}"
        with output_errors(target, f"{option}={target}", advice):
            yield partial
            _commit(partial, target)
        partial = None
    finally:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
            for folder in made:  # deepest first; only the empty ones this call made
                try:
                    folder.rmdir()
                except OSError:
                    break


def _absolute(target: str | Path, option: str) -> Path:
    """``target`` as an absolute path without ``.`` or ``..`` (``output_dir=.`` has a name then)."""
    path = Path(os.path.abspath(target))
    if path == path.parent:
        raise OutputError(f"{option}={target}: a file system's root cannot be replaced; give a folder inside it")
    return path


def _check_existing(target: Path, option: str, own: tuple[str, ...]) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise OutputError(f"{option}={target} is a file; give a folder")
    for entry in sorted(target.iterdir()):
        if fnmatch.fnmatch(entry.name, ATOMIC_TEMPORARY) and entry.is_file():
            continue  # a file write that was killed half-way: replaced with the rest
        if entry.is_dir() or not any(fnmatch.fnmatch(entry.name, pattern) for pattern in own):
            raise OutputError(
                f"{option}={target} holds {entry.name}, which this command does not write; its outputs "
                f"replace the folder's content, so choose a new or empty {option}"
            )


def _missing_parents(target: Path) -> list[Path]:
    """The parent folders of ``target`` that do not exist yet, deepest first."""
    missing = []
    for folder in target.absolute().parents:
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _prefix(target: Path) -> str:
    return f".{target.name}.partial-{socket.gethostname()}-"


def _make_partial(target: Path) -> Path:
    while True:
        partial = target.with_name(f"{_prefix(target)}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            partial.mkdir()  # plain mkdir (not mkdtemp): the final folder gets umask permissions
            return partial
        except FileExistsError:
            continue


def _remove_abandoned(target: Path) -> None:
    """Partial folders of ``target`` left by killed processes of this machine."""
    prefix = _prefix(target)
    for partial in target.parent.glob(glob.escape(prefix) + "*"):
        pid = partial.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _commit(partial: Path, target: Path) -> None:
    """Rename ``partial`` to ``target``; an earlier ``target`` is moved aside first, then removed."""
    if not target.exists():
        os.replace(partial, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.replace(target, old)
    try:
        os.replace(partial, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)

"""Write files so that a reader sees the old version or the whole new one, never a part."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the writer only calls the frame's own method: no pandas import for text writers
    import pandas as pd


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_frame(path: str | Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as a CSV table (no index, ``\\n`` line ends) atomically.

    Floats keep full precision, never rounded: a confident model's patient probabilities differ
    beyond the 6th decimal, and a rounded table would tie them, so an AUROC recomputed from it
    (e.g. by ``gliograde.compare``) would not be the one that was reported.
    """
    write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def check_writable_dir(directory: str | Path) -> None:
    """Create ``directory`` if needed and prove a file can be written there (raises OSError)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def write_files(files: dict[Path, str | bytes]) -> None:
    """Write several files as one step: every temporary sibling first, then the renames, so a
    failure while writing (a full disk) leaves each file as it was."""
    temps: list[tuple[Path, Path]] = []
    try:
        for path, content in files.items():
            path = Path(path)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            temps.append((tmp, path))
            if isinstance(content, bytes):
                tmp.write_bytes(content)
            else:
                tmp.write_text(content)
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)

"""Progress bars on stderr for the slow steps of an evaluation, shown only to a person watching."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm


def shown(enabled: bool, stream: IO[str] | None = None) -> bool:
    """Whether to draw bars: asked for, and ``stream`` (stderr) is a terminal, not a log file."""
    stream = sys.stderr if stream is None else stream
    return bool(enabled) and hasattr(stream, "isatty") and stream.isatty()


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: int | None = None,
    enabled: bool = True,
    stream: IO[str] | None = None,
) -> tqdm:
    """A tqdm bar on ``stream`` (stderr), disabled unless :func:`shown`; it closes when exhausted."""
    stream = sys.stderr if stream is None else stream
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        file=stream,
        disable=not shown(enabled, stream),
        leave=False,
    )

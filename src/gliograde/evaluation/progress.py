"""Progress of the slow steps of an evaluation on stderr: bars for a person at a terminal, a plain
line every few seconds (``evaluate: inference (test) 120/400 slices``) for a log file."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm import tqdm

LINE_EVERY_S = 5.0
"""Seconds between two plain progress lines when stderr is not a terminal."""


def shown(enabled: bool, stream: IO[str] | None = None) -> bool:
    """Whether to draw bars: asked for, and ``stream`` (stderr) is a terminal, not a log file."""
    stream = sys.stderr if stream is None else stream
    return bool(enabled) and hasattr(stream, "isatty") and stream.isatty()


class LineProgress:
    """tqdm's counting interface (iterate, ``update``, ``close``, ``with``) printing a plain line
    at most every ``every`` seconds (default :data:`LINE_EVERY_S`), and the final count when the
    step ends after having printed a line."""

    def __init__(
        self,
        iterable: Iterable[Any] | None,
        desc: str,
        total: int | None,
        unit: str,
        stream: IO[str],
        every: float | None = None,
        clock=time.monotonic,
        command: str = "evaluate",
    ):
        self.iterable, self.desc, self.unit, self.stream = iterable, desc, unit, stream
        self.command = command
        self.postfix = ""
        self.total = total if total is not None else _length(iterable)
        self.every = LINE_EVERY_S if every is None else every
        self.clock = clock
        self.n = 0
        self.printed: int | None = None  # the count last printed
        self.last = clock()
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more done; print a line when ``every`` seconds passed since the last."""
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self._line()
            self.last = now

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        """What is being worked on now, shown at the end of the next line (as tqdm's postfix)."""
        self.postfix = text

    def close(self) -> None:
        """End the step: a last line with the final count, if a line was printed and it is behind."""
        if not self.closed and self.printed is not None and self.printed != self.n:
            self._line()
        self.closed = True

    def _line(self) -> None:
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        unit = f" {self.unit}" if self.unit else ""
        postfix = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.command}: {self.desc} {count}{unit}{postfix}", file=self.stream, flush=True)
        self.printed = self.n


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "",
    enabled: bool = True,
    stream: IO[str] | None = None,
    command: str = "evaluate",
) -> tqdm | LineProgress:
    """A tqdm bar on ``stream`` (stderr) when :func:`shown`, plain lines when it is not a terminal,
    nothing when not ``enabled``; it closes when exhausted. Plain lines start with ``command``."""
    stream = sys.stderr if stream is None else stream
    if enabled and not shown(enabled, stream):
        return LineProgress(iterable, desc, total, unit, stream, command=command)
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit or "it",
        file=stream,
        disable=not shown(enabled, stream),
        leave=False,
    )


def _length(iterable: Iterable[Any] | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None

"""The project's user-facing error types.

Every mistake a user can make (a bad option, bad input data, a missing run file) raises a
subclass of :class:`GliogradeError` whose message is one line saying what to change. Entry
points catch only this base class and exit 2 with that line; any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

USER_ERROR_EXIT = 2


class GliogradeError(Exception):
    """A problem the user can fix; ``str(err)`` is one line that says how."""


class ConfigError(GliogradeError, ValueError):
    """An option has a wrong type, an out-of-range value, or contradicts another option."""


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Print a :class:`GliogradeError` as ``error: ...`` and exit 2; let anything else through."""
    try:
        yield
    except GliogradeError as err:
        print(f"error: {err}".replace("\n", " "), file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)

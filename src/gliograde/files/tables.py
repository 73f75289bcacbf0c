"""Read a CSV table with every cell kept as written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gliograde.data.errors import DataError


def read_table(path: str | Path) -> pd.DataFrame:
    """The CSV at ``path`` as strings exactly as written (ids such as ``001`` stay; an empty or
    missing cell is ``""``); a file without even a header gives a frame without columns.

    A malformed or non-UTF-8 file raises :class:`DataError` naming it; an unreadable one ``OSError``.
    """
    try:
        # index_col=False: a first data row wider than its header must not turn column 1 into an index.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except pd.errors.ParserError as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise DataError(f"malformed CSV ({detail}); check its delimiter and quoting", where=path) from None
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text (byte {err.start}); save it as a UTF-8 CSV", where=path) from None
    return frame.fillna("")

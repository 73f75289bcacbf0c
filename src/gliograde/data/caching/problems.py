"""A cache's problems.csv: the patients its build skipped, each with the file and the problem."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gliograde.data.errors import DataError
from gliograde.files.tables import read_table

COLUMNS = ["patient_id", "file", "problem"]


def write_problems(path: Path, problems: list[DataError]) -> None:
    """Write ``problems`` to ``path`` (a header alone when there are none)."""
    rows = [[err.patient or "", str(err.where or ""), err.problem] for err in problems]
    # "\r\n" as the csv module wrote it: the bytes of a cache's files stay as they were.
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False, lineterminator="\r\n")


def read_problems(path: Path) -> list[DataError]:
    """The problems recorded at ``path``; none when the file does not exist."""
    if not path.exists():
        return []
    table = read_table(path)
    return [
        DataError(row["problem"], row["patient_id"] or None, row["file"] or None)
        for row in table.to_dict("records")
    ]

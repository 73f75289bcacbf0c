"""A cache's problems.csv, written and read with pandas: the same bytes the csv module wrote
(so a cache's sealed record of its files is unchanged), and every problem read back as it was."""

from __future__ import annotations

import csv
from pathlib import Path

from gliograde.data.caching.problems import read_problems, write_problems
from gliograde.data.errors import DataError

HOSTILE = [
    DataError("truncated NIfTI: shorter than its header promises", "BraTS20_Training_001", Path("/c/p1/t1.nii")),
    DataError('cannot preprocess (ValueError: "x", y\nz)', "id,with;comma", Path("/c/a b/flair.nii.gz")),
    DataError("every modality is constant", "007", None),
    DataError("no patient id", None, Path("/c/stray")),
]


def _as_the_csv_module_wrote_it(path: Path, problems: list[DataError]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "file", "problem"])
        for err in problems:
            writer.writerow([err.patient or "", err.where or "", err.problem])


def test_problems_csv_keeps_its_bytes_and_reads_back_each_problem(tmp_path):
    ours, before = tmp_path / "problems.csv", tmp_path / "before.csv"
    write_problems(ours, HOSTILE)
    _as_the_csv_module_wrote_it(before, HOSTILE)
    assert ours.read_bytes() == before.read_bytes()
    back = read_problems(ours)
    assert [(e.problem, e.patient, e.where) for e in back] == [
        (e.problem, e.patient, None if e.where is None else str(e.where)) for e in HOSTILE
    ]
    assert back[2].patient == "007"  # an id is text, never a number


def test_no_problem_is_a_header_alone_and_no_file_is_no_problem(tmp_path):
    path = tmp_path / "problems.csv"
    write_problems(path, [])
    assert path.read_bytes() == b"patient_id,file,problem\r\n"
    assert read_problems(path) == []
    assert read_problems(tmp_path / "absent.csv") == []

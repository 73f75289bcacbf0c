"""The label table as spreadsheets write it: BOM, CRLF, other delimiters, quoting, padding rows,
extra clinical columns, and the one-line errors for tables that cannot be trusted."""

from __future__ import annotations

from pathlib import Path

import pytest

from gliograde.data.errors import DataError
from gliograde.data.discovery.labels import UnusableLabelTable, read_label_frame, read_label_table
from gliograde.data.discovery.specs import LabelSpec

SPEC = LabelSpec(id_column="ID", label_column="Grade")


def _table(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.mark.parametrize(
    "text",
    [
        "\ufeffID,Grade,Age\r\na,HGG,50\r\nb,NA,61\r\n\r\n,,,,\r\n",  # Excel: BOM, CRLF, padding
        "ID;Grade;Age\na;HGG;50\nb;;61\n",
        "ID\tGrade\tAge\na\tHGG\t50\nb\tNA\t61\n",
        "ID|Grade|Note\na|HGG|left, frontal\nb|NA|\n",
        'ID,Grade,Note\n"a","HGG","left, frontal"\n" b ",NA,"said ""NA"""\n',
        'ID,Grade,"Note; free text"\na,HGG,"x;y;z"\nb,NA,;\n',  # the header's delimiter, quoting respected
    ],
    ids=["excel_crlf_bom", "semicolon", "tab", "pipe", "quoted", "other_delimiter_quoted"],
)
def test_spreadsheet_dialects(tmp_path, text):
    assert read_label_table(_table(tmp_path, text), SPEC) == {"a": "HGG", "b": None}


def test_frame_keeps_clinical_columns_and_line_numbers(tmp_path):
    path = _table(tmp_path, "\n# \nID,Grade,Age,Survival\na,HGG,50,NA\n\nb,LGG,,300\n")
    spec = LabelSpec(id_column="ID", label_column="Grade", missing_values=("NA", ""))
    # The header is the first line with content ("# " is one: a one-column line).
    with pytest.raises(UnusableLabelTable, match=r"no id column 'ID' \(columns present: '#'\)"):
        read_label_frame(path, spec)
    path = _table(tmp_path, "\n\nID,Grade,Age,Survival\na,HGG,50,NA\n\nb,LGG,,300\n")
    frame = read_label_frame(path, spec)
    assert list(frame.columns) == ["ID", "Grade", "Age", "Survival"]
    assert frame.index.tolist() == [4, 6]
    assert frame.loc[4].tolist() == ["a", "HGG", "50", None]
    assert frame.loc[6].tolist() == ["b", "LGG", None, "300"]


def test_duplicate_id_names_both_lines(tmp_path):
    path = _table(tmp_path, "ID,Grade\na,HGG\n\nb,LGG\na,LGG\n")
    with pytest.raises(DataError) as info:
        read_label_table(path, SPEC)
    assert str(info.value) == (
        f"{path}: duplicate id 'a' in column 'ID' (lines 2 and 5); each patient needs exactly one row"
    )


def test_column_named_twice(tmp_path):
    path = _table(tmp_path, "ID,Grade,Grade\na,HGG,LGG\n")
    with pytest.raises(DataError, match=r"column 'Grade' appears 2 times in the header; keep one"):
        read_label_table(path, SPEC)


@pytest.mark.parametrize("text", ["", "\n\n", ",,\n,,\n"])
def test_empty_table(tmp_path, text):
    with pytest.raises(UnusableLabelTable, match=r"label table is empty \(expected a header with columns"):
        read_label_table(_table(tmp_path, text), SPEC)


def test_malformed_table_is_one_line(tmp_path):
    path = _table(tmp_path, 'ID,Grade\n"a,HGG\nb,LGG\n')
    with pytest.raises(DataError) as info:
        read_label_table(path, SPEC)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: malformed label table (") and "quoting" in msg

"""predict.py's manifest: read with pandas, cells as written, one-line errors naming the file."""

from __future__ import annotations

import pytest

from gliograde.data.errors import DataError
from gliograde.data.discovery.specs import MODALITIES
from gliograde.inference.inputs import from_manifest


def _manifest(tmp_path, text: str):
    for name in ("a", "b", "c", "d", "m"):
        (tmp_path / f"{name}.nii.gz").write_bytes(b"")
    path = tmp_path / "list.csv"
    path.write_text(text)
    return path


def test_manifest_keeps_ids_as_written_and_strips_cells(tmp_path):
    header = ", ".join(["patient_id", *MODALITIES, "mask"])
    path = _manifest(tmp_path, f"{header}\n 007 ,a.nii.gz,b.nii.gz,c.nii.gz,d.nii.gz,\n")
    (patient,) = from_manifest(path)
    assert patient.patient_id == "007"
    assert [patient.modalities[m].name for m in MODALITIES] == ["a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz"]
    assert patient.mask is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "missing column(s) ['patient_id', "),
        ("patient_id,flair,t1ce,t1\nX,a.nii.gz,b.nii.gz,c.nii.gz\n", "missing column(s) ['t2']"),
        ("patient_id,flair,t1ce,t1,t2\n", "no rows"),
        ("patient_id,flair,t1ce,t1,t2\nX,a.nii.gz,b.nii.gz,c.nii.gz\n", "row 2: no t2 file given"),
        ("patient_id,flair,t1ce,t1,t2\nX,a,b,c,d\nY,a,b,c,d,e,f\n", "malformed CSV"),
    ],
)
def test_manifest_mistakes_are_one_line(tmp_path, text, problem):
    with pytest.raises(DataError) as err:
        from_manifest(_manifest(tmp_path, text))
    assert problem in str(err.value) and "list.csv" in str(err.value)
    assert "\n" not in str(err.value)


def test_with_on_error_skip_a_row_with_missing_files_is_listed_not_raised(tmp_path):
    header = ",".join(["patient_id", *MODALITIES])
    rows = [
        "GOOD,a.nii.gz,b.nii.gz,c.nii.gz,d.nii.gz",
        "GONE,a.nii.gz,b.nii.gz,c.nii.gz,gone.nii.gz",
        "BARE,a.nii.gz,b.nii.gz,c.nii.gz,",
    ]
    path = _manifest(tmp_path, header + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match="patient GONE: .*gone.nii.gz: file not found"):
        from_manifest(path)  # the default: the first bad row stops it
    skipped: list[DataError] = []
    assert [p.patient_id for p in from_manifest(path, skipped=skipped)] == ["GOOD"]
    problems = [(e.patient, e.problem) for e in skipped]
    assert problems == [("GONE", "file not found"), ("BARE", "row 4: no t2 file given")]

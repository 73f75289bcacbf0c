"""Cohort discovery on tiny fake BraTS trees (empty files: nothing here decodes a volume)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gliograde.data.discovery.cohort import Cohort, discover_cohort, find_patient_root
from gliograde.data.errors import DataError
from gliograde.data.discovery.labels import LabelTable, UnusableLabelTable, read_label_table
from gliograde.data.discovery.specs import MODALITIES, LabelSpec, LayoutSpec

L2020 = LayoutSpec()
L2021 = LayoutSpec(
    name="brats2021",
    patient_pattern=r"BraTS2021_\d{5}",
    modality_files={m: "{id}_" + m for m in MODALITIES},
    mask_file="{id}_seg",
)
L2023 = LayoutSpec(
    name="brats2023_gli",
    patient_pattern=r"BraTS-GLI-\d{5}-\d{3}",
    modality_files={"flair": "{id}-t2f", "t1": "{id}-t1n", "t1ce": "{id}-t1c", "t2": "{id}-t2w"},
    mask_file="{id}-seg",
)
NO_LABELS = LabelSpec(file=None)
LABELS = LabelSpec()  # name_mapping.csv, BraTS_2020_subject_ID, Grade
ID_COL, LABEL_COL = LABELS.id_column, LABELS.label_column


def make_patient(
    parent: Path,
    pid: str,
    layout: LayoutSpec = L2020,
    ext: str = ".nii",
    mask: bool = True,
    skip: tuple[str, ...] = (),
    exts: dict | None = None,
) -> Path:
    folder = parent / pid
    folder.mkdir(parents=True)
    for m in MODALITIES:
        if m in skip:
            continue
        e = (exts or {}).get(m, ext)
        (folder / (layout.modality_files[m].replace("{id}", pid) + e)).write_bytes(b"")
    if mask:
        (folder / (layout.mask_file.replace("{id}", pid) + ext)).write_bytes(b"")
    return folder


def make_2020(parent: Path, n: int = 3, **kw) -> list[str]:
    ids = [f"BraTS20_Training_{i:03d}" for i in range(1, n + 1)]
    for pid in ids:
        make_patient(parent, pid, **kw)
    return ids


def write_csv(path: Path, rows: list[list[str]], bom: bool = False) -> Path:
    text = "\n".join(",".join(r) for r in rows) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def mapping(path: Path, labels: dict[str, str], bom: bool = False) -> Path:
    rows = [["Grade", "BraTS_2019_subject_ID", ID_COL]]
    rows += [[g, "NA", pid] for pid, g in labels.items()]
    return write_csv(path, rows, bom=bom)


def one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg
    return msg


def only_problem(cohort: Cohort) -> DataError:
    assert len(cohort.problems) == 1, cohort.problems
    return cohort.problems[0]


# ------------------------------------------------------------------------------- root finding


def test_plain_root(tmp_path):
    ids = make_2020(tmp_path)
    (tmp_path / "README.txt").write_text("hi")
    c = discover_cohort(tmp_path, L2020, NO_LABELS, require_labels=False)
    assert c.root == tmp_path.resolve()
    assert [p.patient_id for p in c.patients] == ids
    p = c.patients[0]
    assert list(p.modalities) == list(MODALITIES)
    assert p.modalities["t1ce"] == tmp_path.resolve() / ids[0] / f"{ids[0]}_t1ce.nii"
    assert p.mask == p.folder / f"{ids[0]}_seg.nii"
    assert p.label is None and not c.labelled and c.label_file is None and c.problems == []
    assert c.classes == ("LGG", "HGG")


def test_kaggle_nesting_two_levels_with_debris(tmp_path):
    inner = tmp_path / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    ids = make_2020(inner)
    mapping(inner / "name_mapping.csv", {ids[0]: "LGG", ids[1]: "HGG", ids[2]: "HGG"})
    # macOS archive debris mirroring the tree at the same depth, plus stray files
    mac = tmp_path / "__MACOSX" / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    make_2020(mac)
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "BraTS2020_TrainingData" / ".DS_Store").write_bytes(b"\0")
    hidden = tmp_path / ".cache" / "x"
    make_2020(hidden)
    (tmp_path / "README.md").write_text("readme")
    (tmp_path / "survival_info.csv").write_text("a,b\n")
    (inner / ids[0] / f"._{ids[0]}_flair.nii").write_bytes(b"\0")  # AppleDouble file

    assert find_patient_root(tmp_path, L2020) == inner.resolve()
    assert find_patient_root(tmp_path / "BraTS2020_TrainingData", L2020) == inner.resolve()
    assert find_patient_root(inner, L2020) == inner.resolve()
    c = discover_cohort(tmp_path, L2020, LABELS, require_labels=True)
    assert c.root == inner.resolve()
    assert [p.label for p in c.patients] == [0, 1, 1]
    assert c.labelled and c.label_file == inner / "name_mapping.csv"


def test_three_levels_is_too_deep(tmp_path):
    make_2020(tmp_path / "a" / "b" / "c")
    with pytest.raises(DataError, match="up to 2 levels below") as e:
        find_patient_root(tmp_path, L2020)
    assert "BraTS20_(Training|Validation)" in one_line(e.value)


def test_2021_naming_gz(tmp_path):
    for pid in ("BraTS2021_00000", "BraTS2021_00002"):
        make_patient(tmp_path, pid, L2021, ext=".nii.gz")
    c = discover_cohort(tmp_path, L2021, NO_LABELS, require_labels=False)
    assert [p.patient_id for p in c.patients] == ["BraTS2021_00000", "BraTS2021_00002"]
    assert c.patients[0].modalities["flair"].name == "BraTS2021_00000_flair.nii.gz"
    assert c.patients[0].mask.name == "BraTS2021_00000_seg.nii.gz"


def test_2023_naming_gz(tmp_path):
    pid = "BraTS-GLI-00000-000"
    make_patient(tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", pid, L2023, ext=".nii.gz")
    c = discover_cohort(tmp_path, L2023, NO_LABELS, require_labels=False)
    p = c.patients[0]
    assert {m: f.name for m, f in p.modalities.items()} == {
        "flair": f"{pid}-t2f.nii.gz",
        "t1": f"{pid}-t1n.nii.gz",
        "t1ce": f"{pid}-t1c.nii.gz",
        "t2": f"{pid}-t2w.nii.gz",
    }
    assert list(p.modalities) == list(MODALITIES)
    assert p.mask.name == f"{pid}-seg.nii.gz"


def test_mixed_nii_and_gz(tmp_path):
    pid = "BraTS20_Training_001"
    make_patient(tmp_path, pid, exts={"t1": ".nii.gz", "t2": ".nii.gz"})
    c = discover_cohort(tmp_path, L2020, NO_LABELS, require_labels=False)
    names = {m: f.name for m, f in c.patients[0].modalities.items()}
    assert names["t1"].endswith(".nii.gz") and names["flair"].endswith("_flair.nii")


def test_both_extensions_is_a_problem(tmp_path):
    pid = "BraTS20_Training_001"
    folder = make_patient(tmp_path, pid)
    (folder / f"{pid}_t1.nii.gz").write_bytes(b"")
    make_patient(tmp_path, "BraTS20_Training_002")
    c = discover_cohort(tmp_path, L2020, NO_LABELS, require_labels=False)
    assert [p.patient_id for p in c.patients] == ["BraTS20_Training_002"]
    msg = one_line(only_problem(c))
    assert pid in msg and f"{pid}_t1.nii" in msg and f"{pid}_t1.nii.gz" in msg


def test_missing_modality_is_a_problem(tmp_path):
    pid = "BraTS20_Training_001"
    make_patient(tmp_path, pid, skip=("flair",))
    make_patient(tmp_path, "BraTS20_Training_002")
    c = discover_cohort(tmp_path, L2020, NO_LABELS, require_labels=False)
    err = only_problem(c)
    assert err.patient == pid
    assert one_line(err) == (
        f"patient {pid}: {tmp_path.resolve() / pid}: missing flair file (expected {pid}_flair.nii[.gz])"
    )
    assert [p.patient_id for p in c.patients] == ["BraTS20_Training_002"]


def test_missing_modality_case_hint(tmp_path):
    pid = "BraTS20_Training_001"
    folder = make_patient(tmp_path, pid, skip=("flair",))
    (folder / f"{pid}_FLAIR.nii").write_bytes(b"")
    c = discover_cohort(tmp_path, L2020, NO_LABELS, require_labels=False)
    assert f"{pid}_FLAIR.nii" in one_line(only_problem(c))


def test_mask_fallback_case_355(tmp_path, caplog):
    pid = "BraTS20_Training_355"
    folder = make_patient(tmp_path, pid, mask=False)
    (folder / "W39_1998.09.19_Segm.nii").write_bytes(b"")
    (folder / "._W39_1998.09.19_Segm.nii").write_bytes(b"")  # debris is never a candidate
    with caplog.at_level(logging.WARNING, logger="gliograde"):
        c = discover_cohort(tmp_path, L2020, NO_LABELS, require_labels=False)
    assert c.patients[0].mask == c.patients[0].folder / "W39_1998.09.19_Segm.nii"
    warns = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1 and pid in warns[0] and "W39_1998.09.19_Segm.nii" in warns[0]


def test_no_mask_is_fine(tmp_path, caplog):
    pid = "BraTS20_Validation_001"
    make_patient(tmp_path, pid, mask=False)
    (tmp_path / pid / "notes.txt").write_text("not nifti")
    with caplog.at_level(logging.WARNING, logger="gliograde"):
        c = discover_cohort(tmp_path, L2020, NO_LABELS, require_labels=False)
    assert c.patients[0].mask is None and c.problems == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_several_mask_candidates_warn_and_use_none(tmp_path, caplog):
    pid = "BraTS20_Training_001"
    folder = make_patient(tmp_path, pid, mask=False)
    (folder / "a_seg.nii").write_bytes(b"")
    (folder / "b_seg.nii.gz").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="gliograde"):
        c = discover_cohort(tmp_path, L2020, NO_LABELS, require_labels=False)
    assert c.patients[0].mask is None
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert pid in msg and "a_seg.nii" in msg and "b_seg.nii.gz" in msg


def test_ambiguous_root(tmp_path):
    make_2020(tmp_path / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData")
    val = tmp_path / "BraTS2020_ValidationData" / "MICCAI_BraTS2020_ValidationData"
    make_patient(val, "BraTS20_Validation_001", mask=False)
    with pytest.raises(DataError, match="ambiguous root") as e:
        find_patient_root(tmp_path, L2020)
    msg = one_line(e.value)
    assert "MICCAI_BraTS2020_TrainingData" in msg and "MICCAI_BraTS2020_ValidationData" in msg


def test_kaggle_top_level_picks_the_cohort_that_holds_the_label_file(tmp_path):
    train = tmp_path / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    make_2020(train)
    mapping(train / "name_mapping.csv", {"BraTS20_Training_001": "LGG"})
    val = tmp_path / "BraTS2020_ValidationData" / "MICCAI_BraTS2020_ValidationData"
    make_patient(val, "BraTS20_Validation_001", mask=False)
    (val / "name_mapping_validation_data.csv").write_text("BraTS_2020_subject_ID\nBraTS20_Validation_001\n")
    assert find_patient_root(tmp_path, L2020, "name_mapping.csv") == train.resolve()
    assert find_patient_root(tmp_path, L2020, "name_mapping_validation_data.csv") == val.resolve()
    with pytest.raises(DataError, match="ambiguous root"):
        find_patient_root(tmp_path, L2020, "absent.csv")


def test_same_patient_in_two_places(tmp_path):
    make_2020(tmp_path / "copy1")
    make_2020(tmp_path / "copy2")
    with pytest.raises(DataError) as e:
        discover_cohort(tmp_path, L2020, NO_LABELS, require_labels=False)
    msg = one_line(e.value)
    assert "copy1" in msg and "copy2" in msg and "BraTS20_Training_001" in msg


def test_duplicate_ids_differing_in_case(tmp_path):
    layout = LayoutSpec(patient_pattern=r"(?i)brats20_training_\d{3}")
    make_patient(tmp_path, "BraTS20_Training_001", layout)
    make_patient(tmp_path, "brats20_training_001", layout)
    with pytest.raises(DataError, match="duplicate patient id") as e:
        discover_cohort(tmp_path, layout, NO_LABELS, require_labels=False)
    assert "BraTS20_Training_001" in one_line(e.value)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        discover_cohort(tmp_path / "nope", L2020, NO_LABELS, require_labels=False)
    assert "nope" in one_line(e.value)


def test_root_is_a_file(tmp_path):
    f = tmp_path / "data.zip"
    f.write_bytes(b"PK")
    with pytest.raises(DataError, match="not a directory") as e:
        find_patient_root(f, L2020)
    assert "data.zip" in one_line(e.value)


def test_empty_root(tmp_path):
    with pytest.raises(DataError, match="no patient folders matching") as e:
        find_patient_root(tmp_path, L2020)
    msg = one_line(e.value)
    assert r"'BraTS20_(Training|Validation)_\d{3}'" in msg and "data.layout" in msg


def test_wrong_layout(tmp_path):
    make_patient(tmp_path, "BraTS2021_00000", L2021, ext=".nii.gz")
    with pytest.raises(DataError, match="is data.layout right") as e:
        discover_cohort(tmp_path, L2020, NO_LABELS, require_labels=False)
    assert "BraTS2021_00000" in one_line(e.value)  # the folders it did see


def test_root_is_a_patient_folder(tmp_path):
    folder = make_patient(tmp_path, "BraTS20_Training_001")
    with pytest.raises(DataError, match="looks like a patient folder") as e:
        find_patient_root(folder, L2020)
    one_line(e.value)


def test_only_debris_is_no_patients(tmp_path):
    make_2020(tmp_path / "__MACOSX")
    make_2020(tmp_path / ".hidden")
    with pytest.raises(DataError, match="no patient folders"):
        find_patient_root(tmp_path, L2020)


def test_bad_layout_is_a_config_error(tmp_path):
    make_2020(tmp_path)
    bad = LayoutSpec(modality_files={"flair": "{id}_flair"})
    with pytest.raises(ValueError, match="modality_files"):
        discover_cohort(tmp_path, bad, NO_LABELS, require_labels=False)


# -------------------------------------------------------------------------------------- labels


def test_labels_with_bom_and_whitespace(tmp_path):
    ids = make_2020(tmp_path)
    write_csv(
        tmp_path / "name_mapping.csv",
        [[" Grade ", f" {ID_COL} "], [" LGG", f"{ids[0]} "], ["HGG ", ids[1]], ["HGG", ids[2]]],
        bom=True,
    )
    c = discover_cohort(tmp_path, L2020, LABELS, require_labels=True)
    assert [p.label for p in c.patients] == [0, 1, 1] and c.problems == []


def test_semicolon_delimiter(tmp_path):
    ids = make_2020(tmp_path, n=1)
    (tmp_path / "name_mapping.csv").write_text(f"Grade;{ID_COL}\nHGG;{ids[0]}\n")
    c = discover_cohort(tmp_path, L2020, LABELS, require_labels=True)
    assert c.patients[0].label == 1


@pytest.mark.parametrize("require", [True, False])
def test_missing_label_file(tmp_path, require, caplog):
    make_2020(tmp_path)
    if require:
        with pytest.raises(DataError, match="label table not found") as e:
            discover_cohort(tmp_path, L2020, LABELS, require_labels=True)
        assert "name_mapping.csv" in one_line(e.value)
    else:
        with caplog.at_level(logging.WARNING, logger="gliograde"):
            c = discover_cohort(tmp_path, L2020, LABELS, require_labels=False)
        assert not c.labelled and c.label_file is None and len(c.patients) == 3
        assert all(p.label is None for p in c.patients)
        assert any("name_mapping.csv" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("require", [True, False])
def test_missing_id_column(tmp_path, require):
    ids = make_2020(tmp_path, n=1)
    write_csv(tmp_path / "name_mapping.csv", [["Grade", "BraTS_2019_subject_ID"], ["HGG", ids[0]]])
    if require:
        with pytest.raises(DataError) as e:
            discover_cohort(tmp_path, L2020, LABELS, require_labels=True)
        msg = one_line(e.value)
        assert "name_mapping.csv" in msg and repr(ID_COL) in msg
        assert "'Grade', 'BraTS_2019_subject_ID'" in msg  # the columns present
    else:
        c = discover_cohort(tmp_path, L2020, LABELS, require_labels=False)
        assert not c.labelled and c.patients[0].label is None


@pytest.mark.parametrize("require", [True, False])
def test_missing_label_column_validation_table(tmp_path, require):
    pid = "BraTS20_Validation_001"
    make_patient(tmp_path, pid, mask=False)
    spec = LabelSpec(file="name_mapping_validation_data.csv")
    write_csv(
        tmp_path / spec.file,
        [
            [
                "BraTS_2017_subject_ID",
                "BraTS_2018_subject_ID",
                "TCGA_TCIA_subject_ID",
                "BraTS_2019_subject_ID",
                ID_COL,
            ],
            ["NA", "NA", "NA", "NA", pid],
        ],
    )
    if require:
        with pytest.raises(UnusableLabelTable) as e:
            discover_cohort(tmp_path, L2020, spec, require_labels=True)
        msg = one_line(e.value)
        assert "name_mapping_validation_data.csv" in msg and "'Grade'" in msg
        assert "TCGA_TCIA_subject_ID" in msg
    else:
        c = discover_cohort(tmp_path, L2020, spec, require_labels=False)
        assert not c.labelled and c.label_file is None
        assert [p.label for p in c.patients] == [None]


def test_labels_file_null(tmp_path):
    make_2020(tmp_path)
    with pytest.raises(DataError, match="data.labels.file"):
        discover_cohort(tmp_path, L2020, NO_LABELS, require_labels=True)


def test_duplicate_id_in_table(tmp_path):
    ids = make_2020(tmp_path)
    write_csv(
        tmp_path / "name_mapping.csv", [["Grade", ID_COL], ["HGG", ids[0]], ["LGG", ids[1]], ["HGG", ids[0]]]
    )
    for require in (True, False):
        with pytest.raises(DataError, match="duplicate id") as e:
            discover_cohort(tmp_path, L2020, LABELS, require_labels=require)
        msg = one_line(e.value)
        assert ids[0] in msg and "name_mapping.csv" in msg and repr(ID_COL) in msg


@pytest.mark.parametrize("require", [True, False])
def test_unknown_class(tmp_path, require):
    ids = make_2020(tmp_path)
    mapping(tmp_path / "name_mapping.csv", {ids[0]: "LGG", ids[1]: "GBM", ids[2]: "HGG"})
    c = discover_cohort(tmp_path, L2020, LABELS, require_labels=require)
    err = only_problem(c)
    msg = one_line(err)
    assert err.patient == ids[1]
    for part in (ids[1], "name_mapping.csv", "'Grade'", "'GBM'", "'LGG'", "'HGG'"):
        assert part in msg
    assert [p.patient_id for p in c.patients if p.patient_id not in c.excluded_ids()] == [ids[0], ids[2]]
    assert c.excluded_ids() == {ids[1]}


def test_no_row_and_na(tmp_path):
    ids = make_2020(tmp_path)
    mapping(tmp_path / "name_mapping.csv", {ids[0]: "LGG", ids[1]: "NA"})  # ids[2]: no row
    c = discover_cohort(tmp_path, L2020, LABELS, require_labels=True)
    assert [p.patient_id for p in c.patients if p.patient_id not in c.excluded_ids()] == [ids[0]]
    assert [p.label for p in c.patients] == [0, None, None]  # still listed: their images are cached
    na, norow = c.problems
    assert na.patient == ids[1] and "'Grade'" in one_line(na) and "missing" in str(na)
    assert "name_mapping.csv" in str(na)
    assert norow.patient == ids[2] and "no row" in one_line(norow) and repr(ID_COL) in str(norow)

    c = discover_cohort(tmp_path, L2020, LABELS, require_labels=False)
    assert [p.label for p in c.patients] == [0, None, None] and c.problems == []
    assert c.labelled


def test_empty_cell_and_custom_missing_values(tmp_path):
    ids = make_2020(tmp_path, n=2)
    write_csv(tmp_path / "name_mapping.csv", [["Grade", ID_COL], ["", ids[0]], ["?", ids[1]]])
    c = discover_cohort(tmp_path, L2020, LabelSpec(missing_values=("NA", "", "?")), require_labels=False)
    assert [p.label for p in c.patients] == [None, None] and c.problems == []


def test_extra_rows_one_warning(tmp_path, caplog):
    ids = make_2020(tmp_path, n=2)
    extra = {f"BraTS20_Training_{i:03d}": "HGG" for i in range(10, 15)}
    mapping(tmp_path / "name_mapping.csv", {ids[0]: "LGG", ids[1]: "HGG", **extra})
    with open(tmp_path / "name_mapping.csv", "a") as f:
        f.write(",,\n\n")  # Excel debris: blank ids are not rows
    with caplog.at_level(logging.WARNING, logger="gliograde"):
        c = discover_cohort(tmp_path, L2020, LABELS, require_labels=True)
    assert [p.label for p in c.patients] == [0, 1]
    warns = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1 and " 5 row(s)" in warns[0] and "name_mapping.csv" in warns[0]


def test_label_file_resolution(tmp_path):
    inner = tmp_path / "outer" / "MICCAI"
    ids = make_2020(inner, n=1)
    # relative: patient root first, then the given root
    mapping(tmp_path / "outer" / "name_mapping.csv", {ids[0]: "HGG"})
    c = discover_cohort(tmp_path / "outer", L2020, LABELS, require_labels=True)
    assert c.label_file == tmp_path / "outer" / "name_mapping.csv"
    mapping(inner / "name_mapping.csv", {ids[0]: "LGG"})
    c = discover_cohort(tmp_path / "outer", L2020, LABELS, require_labels=True)
    assert c.label_file == inner.resolve() / "name_mapping.csv" and c.patients[0].label == 0
    # absolute: as is
    elsewhere = mapping(tmp_path / "labels.csv", {ids[0]: "HGG"})
    c = discover_cohort(tmp_path / "outer", L2020, LabelSpec(file=str(elsewhere)), True)
    assert c.label_file == elsewhere and c.patients[0].label == 1


def test_file_and_label_problems_both_reported(tmp_path):
    pid = "BraTS20_Training_001"
    make_patient(tmp_path, pid, skip=("t2",))
    mapping(tmp_path / "name_mapping.csv", {pid: "XYZ"})
    c = discover_cohort(tmp_path, L2020, LABELS, require_labels=True)
    assert c.patients == [] and len(c.problems) == 2
    assert all(p.patient == pid for p in c.problems)


def test_read_label_table_directly(tmp_path):
    path = write_csv(tmp_path / "t.csv", [["Grade", ID_COL], ["HGG", "a"], ["NA", "b"]], bom=True)
    assert read_label_table(path, LABELS) == {"a": "HGG", "b": None}
    table = LabelTable.load(path, LABELS)
    assert table.label_of("a", required=True) == 1
    assert table.label_of("b", required=False) is None
    assert table.unmatched_ids(["a"]) == ["b"]


def test_not_utf8_table(tmp_path):
    make_2020(tmp_path, n=1)
    (tmp_path / "name_mapping.csv").write_bytes(b"Grade,BraTS_2020_subject_ID\n\xff\xfe,x\n")
    with pytest.raises(DataError, match="UTF-8") as e:
        discover_cohort(tmp_path, L2020, LABELS, require_labels=False)
    assert "name_mapping.csv" in one_line(e.value)

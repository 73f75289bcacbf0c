"""What is in SRC: patients, series, modality rules, and one line for each bad input."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from omegaconf import OmegaConf
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from gliograde.data.errors import DataError
from gliograde.errors import ConfigError
from gliograde.ingest.dicom_write import write_dicom_series
from gliograde.ingest.series_rules import DEFAULT_RULES, SeriesRules
from gliograde.ingest.sources import check_source, find_patients

SERIES = ("AX T2 FLAIR", "t1_mprage_sag", "T1 POST GD", "TSE T2")


def _volume(seed: int, size=(16, 16, 8), spacing=(1.0, 1.0, 2.0)) -> sitk.Image:
    voxels = np.random.default_rng(seed).integers(0, 1000, size=size[::-1]).astype(np.int16)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(spacing)
    image.SetOrigin((-8.0, -8.0, -8.0))
    return image


def _dicom_patient(root: Path, pid: str, series=SERIES, *, folder: str | None = None,
                   one_folder: bool = False, suffix: str = ".dcm") -> dict[str, list[Path]]:
    """Write a patient's series under root/folder (one sub-folder per series unless one_folder)."""
    base = root / (folder or pid.replace("/", "_"))
    study = generate_uid()
    written = {}
    for number, description in enumerate(series, start=1):
        target = base if one_folder else base / f"{number:02d}" / "sub"
        files = write_dicom_series(_volume(number), target, patient_id=pid, study_uid=study,
                                   series_description=description, series_number=number,
                                   file_prefix=f"{pid.replace('/', '_')}_S{number}_")
        if suffix != ".dcm":
            files = [f.rename(f.with_suffix(suffix)) for f in files]
        written[description] = files
    return written


def _nifti(path: Path, affine=None, shape=(16, 16, 8), qform_code=1, sform_code=1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.0, 1.0, 2.0, 1.0]) if affine is None else affine
    data = np.random.default_rng(1).integers(0, 500, size=shape).astype(np.int16)
    image = nib.Nifti1Image(data, affine if qform_code or sform_code else None)
    image.header.set_qform(affine if qform_code else None, code=qform_code)
    image.header.set_sform(affine if sform_code else None, code=sform_code)
    nib.save(image, str(path))
    return path


def _nifti_patient(root: Path, folder: str, names=("AX_FLAIR", "T1_SAG", "T1_GD", "T2_TSE")) -> Path:
    for name in names:
        _nifti(root / folder / f"{name}.nii.gz")
    return root / folder


def _one_line(call, *needles) -> str:
    with pytest.raises(DataError) as err:
        call()
    line = str(err.value)
    assert "\n" not in line
    for needle in needles:
        assert needle in line, line
    return line


# --- modality rules -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, modality", [
    ("AX T2 FLAIR", "flair"), ("t2_tirm_tra_dark-fluid", "flair"), ("DARK-FLUID", "flair"),
    ("Sag CUBE FLAIR", "flair"), ("AX T1 FLAIR", "t1"), ("T1 POST", "t1ce"), ("T1+C", "t1ce"),
    ("T1 GD", "t1ce"), ("T1CE", "t1ce"), ("MPRAGE POST", "t1ce"), ("AX BRAVO +C", "t1ce"),
    ("T1 GADO", "t1ce"), ("T1 CONTRAST", "t1ce"), ("T1 PRE CONTRAST", "t1"), ("Ax T1 pre", "t1"),
    ("T2", "t2"), ("TSE T2", "t2"), ("t2_tse_tra", "t2"), ("T1", "t1"), ("t1_mprage_sag", "t1"),
    ("3D SPGR", "t1"), ("AX BRAVO", "t1"), ("T1 TFE", "t1"), ("localizer", "skip"),
    ("AAHScout", "skip"), ("SURVEY", "skip"), ("ASSET calibration", "skip"),
    ("ep2d_diff_ADC", "skip"), ("DWI", "skip"), ("Perfusion DSC", "skip"), ("T1 MIP", "skip"),
    ("T2*", "skip"), ("brain_mask", None),
])
def test_default_rules_know_common_vendor_names(text, modality):
    assert DEFAULT_RULES.classify(text) == modality


def test_rules_from_config_replace_the_given_keys_and_check_them():
    rules = SeriesRules.from_mapping(OmegaConf.create({"flair": ["*MYSEQ*"], "t2": None}))
    assert rules.classify("MYSEQ 3") == "flair" and rules.classify("AX FLAIR") is None
    assert rules.classify("T2") == "t2"  # None keeps the default
    assert rules.classify("Other", "T1 POST") == "t1ce"  # ProtocolName counts as well
    t1_first = SeriesRules.from_mapping({"order": ["t1", "t1ce", "t2", "flair"]})
    assert t1_first.classify("T1 POST") == "t1" and DEFAULT_RULES.classify("T1 POST") == "t1ce"
    with pytest.raises(ConfigError, match="ingest.series.flare: unknown key"):
        SeriesRules.from_mapping({"flare": ["*"]})
    with pytest.raises(ConfigError, match="must name each of"):
        SeriesRules.from_mapping({"order": ["flair", "t1"]})
    with pytest.raises(ConfigError, match="must be a list of globs"):
        SeriesRules.from_mapping({"t1": "*T1*"})


# --- DICOM --------------------------------------------------------------------------------------

def test_dicom_patient_any_nesting_no_extension_is_read_with_its_geometry(tmp_path):
    written = _dicom_patient(tmp_path, "P1", suffix="")
    (patient,) = find_patients(tmp_path, DEFAULT_RULES)
    assert patient.patient_id == "P1" and patient.source == tmp_path / "P1"
    assert {m: s.description for m, s in patient.series.items()} == dict(zip(
        ["flair", "t1", "t1ce", "t2"], SERIES))
    t1ce = patient.series["t1ce"]
    assert t1ce.kind == "dicom" and len(t1ce.files) == 8 and set(t1ce.files) == set(written["T1 POST GD"])
    assert t1ce.details["size"] == [16, 16, 8] and t1ce.details["spacing"] == [1.0, 1.0, 2.0]
    assert t1ce.details["plane"] == "axial" and t1ce.details["series_number"] == 3
    assert "Explicit VR Little Endian" in t1ce.details["transfer_syntax"]
    image = t1ce.read()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(_volume(3)))
    assert image.GetOrigin() == pytest.approx((-8.0, -8.0, -8.0))


def test_series_mixed_in_one_folder_are_separate_series(tmp_path):
    _dicom_patient(tmp_path, "P1", one_folder=True)
    (patient,) = find_patients(tmp_path, DEFAULT_RULES)
    assert sorted(patient.series) == ["flair", "t1", "t1ce", "t2"]
    assert len({s.uid for s in patient.series.values()}) == 4


def test_two_patient_ids_in_one_folder_are_two_patients(tmp_path):
    _dicom_patient(tmp_path, "A1", folder="mixed", one_folder=True)
    _dicom_patient(tmp_path, "B2", folder="mixed", one_folder=True)
    patients = find_patients(tmp_path, DEFAULT_RULES)
    assert [p.patient_id for p in patients] == ["A1", "B2"]
    assert all(len(s.files) == 8 for p in patients for s in p.series.values())


def test_unsafe_patient_id_is_sanitised_and_the_original_kept(tmp_path):
    _dicom_patient(tmp_path, "AB/12 x", folder="p")
    (patient,) = find_patients(tmp_path, DEFAULT_RULES)
    assert patient.patient_id == "AB_12_x"
    assert patient.details["patient_id_original"] == "AB/12 x"
    assert patient.series["flair"].details["patient_id_original"] == "AB/12 x"
    assert any("'AB/12 x' is not a safe folder name" in n for n in patient.notes)
    _dicom_patient(tmp_path, "AB 12 x", folder="q")
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES), "'AB 12 x'", "'AB/12 x'",
              "both become the folder name 'AB_12_x'")


def test_dicom_without_patient_id_takes_its_folder_name(tmp_path):
    _dicom_patient(tmp_path, "", folder="case 12")
    (patient,) = find_patients(tmp_path, DEFAULT_RULES)
    assert patient.patient_id == "case_12" and sorted(patient.series) == ["flair", "t1", "t1ce", "t2"]
    assert "DICOM files without PatientID take the folder name 'case 12' as id" in patient.notes


def _non_image(path: Path, modality: str, pid: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11" if modality == "SR" \
        else "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.SeriesInstanceUID = modality, pid, generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_non_image_objects_are_left_out_and_a_patient_with_only_those_is_one_line(tmp_path):
    _dicom_patient(tmp_path, "P1")
    _non_image(tmp_path / "P1" / "report", "SR", "P1")
    _non_image(tmp_path / "P1" / "rt" / "contours", "RTSTRUCT", "P1")
    write_dicom_series(_volume(9), tmp_path / "P1" / "ct", patient_id="P1", series_description="HEAD CT",
                       extra={"Modality": "CT"})
    (patient,) = find_patients(tmp_path, DEFAULT_RULES)
    assert "left out series that are not MR: CT 'HEAD CT'" in patient.notes
    assert sorted(patient.series) == ["flair", "t1", "t1ce", "t2"]
    assert "left out non-image DICOM objects: RTSTRUCT x1, SR x1" in patient.notes
    _non_image(tmp_path / "P2" / "report", "SR", "P2")
    _non_image(tmp_path / "P2" / "contours", "RTSTRUCT", "P2")
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES), "patient P2", "no MR image series",
              "non-image RTSTRUCT, non-image SR")


def test_a_missing_modality_names_the_series_found_and_the_rule_to_add(tmp_path):
    _dicom_patient(tmp_path, "P1", series=("MYSEQ 3mm", "T1", "T1 POST", "T2", "localizer"))
    line = _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES),
              f"patient P1: {tmp_path / 'P1'}: no flair scan",
                     "'MYSEQ 3mm' (series 1) -> no rules match"[:32], "'localizer' (series 5) -> skip rule",
                     """e.g. 'ingest.series.flair=["MYSEQ 3mm"]'""")
    assert "'T1 POST' (series 3) -> t1ce" in line
    (patient,) = find_patients(tmp_path, SeriesRules.from_mapping({"flair": ["*MYSEQ*"]}))
    assert patient.series["flair"].description == "MYSEQ 3mm"
    assert "left out series 'localizer' (series 5): skip rule" in patient.notes


def test_a_missing_t1ce_is_allowed(tmp_path):
    _dicom_patient(tmp_path, "P1", series=("FLAIR", "T1", "T2"))
    (patient,) = find_patients(tmp_path, DEFAULT_RULES)
    assert sorted(patient.series) == ["flair", "t1", "t2"]
    assert "no t1ce scan found; the patient has no t1ce" in patient.notes


def test_two_series_matching_one_modality_are_one_line_resolved_by_a_rule(tmp_path):
    written = _dicom_patient(tmp_path, "P1",
                             series=("AX T2 FLAIR", "T1", "T1 POST", "T2", "SAG T2 FLAIR POST"))
    written["SAG T2 FLAIR POST"][3].unlink()  # the unwanted one is incomplete: it need not block
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES),
              f"patient P1: {tmp_path / 'P1'}: 2 DICOM scans match flair",
              "'AX T2 FLAIR' (series 1)", "'SAG T2 FLAIR POST' (series 5)",
              """name the one to use with 'ingest.series.flair=["AX T2 FLAIR"]'""")
    (patient,) = find_patients(tmp_path, SeriesRules.from_mapping({"flair": ["AX T2 FLAIR"]}))
    assert patient.series["flair"].details["series_number"] == 1
    # the FLAIR the narrower rule leaves out is not taken for the T2 or the T1ce
    assert patient.series["t2"].description == "T2" and patient.series["t1ce"].description == "T1 POST"
    assert "left out series 'SAG T2 FLAIR POST' (series 5): no rule matches" in patient.notes


def test_localiser_derived_and_2d_only_series_are_left_out_with_notes(tmp_path):
    written = _dicom_patient(tmp_path, "P1", series=(*SERIES, "T2 REFORMAT", "LOC", "FLAIR single"))
    for path in written["T2 REFORMAT"]:
        ds = pydicom.dcmread(path)
        ds.ImageType = ["DERIVED", "SECONDARY", "MPR"]
        ds.save_as(path)
    for path in written["LOC"]:
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(path)
    for path in written["FLAIR single"][1:]:
        path.unlink()
    (patient,) = find_patients(tmp_path, DEFAULT_RULES)
    assert patient.series["flair"].description == "AX T2 FLAIR"
    notes = "\n".join(patient.notes)
    assert "'T2 REFORMAT' (series 5): derived image" in notes
    assert "'LOC' (series 6): localiser" in notes
    assert "'FLAIR single' (series 7): 2D-only (1 slice(s))" in notes


def test_a_one_slice_flair_leaves_the_patient_without_flair_in_one_line(tmp_path):
    written = _dicom_patient(tmp_path, "P1")
    for path in written["AX T2 FLAIR"][1:]:
        path.unlink()
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES), "no flair scan",
              "'AX T2 FLAIR' (series 1) -> 2D-only (1 slice(s))")


def test_a_gap_is_one_line_before_any_pixel_data_of_another_patient_is_decoded(tmp_path):
    good = _dicom_patient(tmp_path, "A1")
    for path in good["TSE T2"]:  # A1's pixel data cannot be decoded: find_patients must not try
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData[:10]
        ds.save_as(path)
    bad = _dicom_patient(tmp_path, "B2")
    bad["T1 POST GD"][4].unlink()
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES), "patient B2: series 'T1 POST GD'",
              "missing slices", "about 1 slice(s) missing")


def test_a_4d_series_is_one_line_naming_patient_and_series(tmp_path):
    written = _dicom_patient(tmp_path, "P1", series=(*SERIES, "second"))
    uid = pydicom.dcmread(written["TSE T2"][0]).SeriesInstanceUID
    for n, path in enumerate(written["second"]):  # a second time point of the T2 series
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesDescription, ds.TemporalPositionIdentifier = uid, "TSE T2", 2
        ds.ImagePositionPatient = pydicom.dcmread(written["TSE T2"][n]).ImagePositionPatient
        ds.save_as(path)
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES), "patient P1: series 'TSE T2'", "4D series")


def test_compressed_series_are_found_and_decoded_or_one_line(tmp_path):
    written = _dicom_patient(tmp_path, "P1")
    for path in written["TSE T2"]:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    (patient,) = find_patients(tmp_path, DEFAULT_RULES)
    assert "RLE Lossless" in patient.series["t2"].details["transfer_syntax"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(patient.series["t2"].read()),
                                  sitk.GetArrayFromImage(_volume(4)))
    for path in written["TSE T2"]:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no image decoder
        ds.save_as(path, enforce_file_format=True)
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES), "patient P1: series 'TSE T2'",
              "transfer syntax MPEG2", "cannot be decoded")


# --- NIfTI --------------------------------------------------------------------------------------

def test_nifti_patients_by_folder_with_hospital_names_in_any_orientation(tmp_path):
    _nifti_patient(tmp_path, "case 7")
    oblique = np.eye(4)
    rotation = np.reshape(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.3).GetMatrix(), (3, 3))
    oblique[:3, :3] = rotation @ np.diag([0.5, 0.5, 4.0])
    oblique[:3, 3] = (10, -20, 30)
    _nifti(tmp_path / "case 7" / "T1_GD.nii.gz", affine=oblique)
    (tmp_path / "case 7" / "T1_GD.json").write_text("{}")
    (patient,) = find_patients(tmp_path, DEFAULT_RULES)
    assert patient.patient_id == "case_7" and patient.details["patient_id_original"] == "case 7"
    assert {m: s.description for m, s in patient.series.items()} == {
        "flair": "AX_FLAIR.nii.gz", "t1": "T1_SAG.nii.gz", "t1ce": "T1_GD.nii.gz", "t2": "T2_TSE.nii.gz"}
    assert "ignored 1 file(s), neither DICOM nor NIfTI: case 7/T1_GD.json" in patient.notes
    image = patient.series["t1ce"].read()
    assert image.GetPixelID() == sitk.sitkFloat32
    direct = sitk.ReadImage(str(tmp_path / "case 7" / "T1_GD.nii.gz"))  # SimpleITK on an intact file
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(direct))
    lps = np.diag([-1.0, -1.0, 1.0]) @ oblique[:3, :3]
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)) * image.GetSpacing(), lps, atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), (-10, 20, 30), atol=1e-4)
    assert patient.series["t1ce"].details["spacing"] == [0.5, 0.5, 4.0]
    assert patient.series["t1ce"].details["plane"] == "oblique"
    assert patient.series["flair"].details["plane"] == "axial"


def test_nifti_two_files_for_one_modality_are_one_line_resolved_by_files_glob(tmp_path):
    _nifti_patient(tmp_path, "P1", names=("AX_FLAIR", "FLAIR_3D", "T1", "T1_POST", "T2"))
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES),
              f"patient P1: {tmp_path / 'P1'}: 2 NIfTI scans match flair",
              "AX_FLAIR.nii.gz", "FLAIR_3D.nii.gz", "files.flair='AX_FLAIR.nii.gz'")
    (patient,) = find_patients(tmp_path, DEFAULT_RULES, {"flair": "*3d*"})
    assert patient.series["flair"].description == "FLAIR_3D.nii.gz"
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES, {"flair": "*dark*"}),
              "files.flair='*dark*' matches none of")


def test_nifti_missing_modality_names_files_option(tmp_path):
    _nifti_patient(tmp_path, "P1", names=("sequence_a", "T1", "T1_POST", "T2"))
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES),
              f"patient P1: {tmp_path / 'P1'}: no flair scan",
              "'sequence_a.nii.gz' -> no rule matches", "e.g. files.flair='sequence_a.nii.gz'")
    (patient,) = find_patients(tmp_path, DEFAULT_RULES, {"flair": "sequence_a*"})
    assert patient.series["flair"].files[0].name == "sequence_a.nii.gz"
    with pytest.raises(ConfigError, match="files.flare: unknown modality"):
        find_patients(tmp_path, DEFAULT_RULES, {"flare": "sequence_a*"})
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES, {"flair": "*.nii.gz", "t2": "T2*"}),
              "files.flair and files.t2 both match 'T2.nii.gz'")


@pytest.mark.parametrize("case, needle", [
    ("shear", "the affine has a shear"),
    ("no_orientation", "qform and sform are both unset"),
    ("4d", "4D NIfTI (16, 16, 8, 3): 3 volumes"),
    ("truncated", "unreadable NIfTI"),
    ("zero_sform", "sform_code is set but the sform matrix is zero"),
])
def test_bad_nifti_is_one_line_found_before_decoding(tmp_path, case, needle):
    folder = _nifti_patient(tmp_path, "P1", names=("T1", "T1_POST", "T2"))
    flair = folder / "FLAIR.nii"
    if case == "shear":
        sheared = np.diag([1.0, 1.0, 2.0, 1.0])
        sheared[0, 2] = 0.7
        _nifti(flair, affine=sheared)
    elif case == "no_orientation":
        _nifti(flair, qform_code=0, sform_code=0)
    elif case == "4d":
        _nifti(flair, shape=(16, 16, 8, 3))
    elif case == "zero_sform":
        _nifti(flair, qform_code=0, sform_code=0)
        image = nib.load(str(flair), mmap=False)
        header = image.header.copy()
        header.set_sform(np.zeros((4, 4)), code=1)
        nib.Nifti1Image(np.asarray(image.dataobj).copy(), None, header).to_filename(str(flair))
        assert int(nib.load(str(flair)).header["sform_code"]) == 1
    else:
        _nifti(flair)
        flair.write_bytes(flair.read_bytes()[:100])
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES), f"patient P1: {flair}: {needle}")


def test_truncated_nifti_voxels_are_one_line(tmp_path):
    folder = _nifti_patient(tmp_path, "P1", names=("T1", "T1_POST", "T2"))
    flair = _nifti(folder / "FLAIR.nii")
    flair.write_bytes(flair.read_bytes()[:2000])  # the header is whole, the voxels are not
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES), f"patient P1: {flair}: truncated: 2000 bytes")
    flair.unlink()
    gz = _nifti(folder / "FLAIR.nii.gz", shape=(64, 64, 32))
    (patient,) = find_patients(tmp_path, DEFAULT_RULES)
    assert patient.series["flair"].read().GetSize() == (64, 64, 32)
    gz.write_bytes(gz.read_bytes()[: int(gz.stat().st_size * 0.9)])  # a gzip cut short
    (patient,) = find_patients(tmp_path, DEFAULT_RULES)  # only the header is read here
    _one_line(patient.series["flair"].read, f"patient P1: {gz}: unreadable NIfTI")


# --- SRC as a whole -----------------------------------------------------------------------------

def test_empty_src_and_src_without_scans_are_one_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _one_line(lambda: find_patients(src, DEFAULT_RULES), f"{src}: is empty")
    (src / "notes.txt").write_text("hello")
    (src / "sub").mkdir()
    (src / "sub" / "scan.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 300)
    _one_line(lambda: find_patients(src, DEFAULT_RULES), "holds no DICOM or NIfTI files (2 other file(s)")
    _one_line(lambda: find_patients(tmp_path / "nowhere", DEFAULT_RULES), "does not exist")


def test_other_files_beside_scans_are_ignored_with_a_note(tmp_path):
    _dicom_patient(tmp_path, "P1")
    (tmp_path / "P1" / "notes.txt").write_text("index")
    _non_image(tmp_path / "P1" / "DICOMDIR", "KO", "")  # an index of no patient
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.nii").write_text("not looked at")
    (tmp_path / "P1" / "01" / "thumbs.db").write_bytes(b"\0" * 200)
    (patient,) = find_patients(tmp_path, DEFAULT_RULES)
    assert "ignored 2 file(s), neither DICOM nor NIfTI: P1/01/thumbs.db, P1/notes.txt" in patient.notes
    assert "ignored 1 file(s), non-image DICOM of no patient: P1/DICOMDIR" in patient.notes


def test_a_dicom_file_cut_short_in_its_header_is_one_line(tmp_path):
    written = _dicom_patient(tmp_path, "P1")
    last = written["T1 POST GD"][-1]  # the last slice: without it the series would still look whole
    last.write_bytes(last.read_bytes()[:400])
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES),
              f"{last}: damaged DICOM file: MR Image Storage without Rows/Columns (truncated?)")


def test_output_inside_source_is_one_line(tmp_path):
    check_source(tmp_path, tmp_path.parent / "out")
    _one_line(lambda: check_source(tmp_path, tmp_path / "out"), "lies inside the source folder")
    _one_line(lambda: check_source(tmp_path, tmp_path), "lies inside the source folder")
    (tmp_path / "file").write_text("x")
    _one_line(lambda: check_source(tmp_path / "file"), "is not a folder")


def test_dicom_and_nifti_patients_in_one_src(tmp_path):
    _dicom_patient(tmp_path, "D1")
    _nifti_patient(tmp_path, "N1")
    started = time.perf_counter()
    patients = find_patients(tmp_path, DEFAULT_RULES)
    assert time.perf_counter() - started < 5
    assert [(p.patient_id, p.series["flair"].kind) for p in patients] == [("D1", "dicom"), ("N1", "nifti")]
    _nifti_patient(tmp_path, "D1")
    _one_line(lambda: find_patients(tmp_path, DEFAULT_RULES), "patient D1: both DICOM series")

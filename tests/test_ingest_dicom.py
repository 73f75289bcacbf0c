"""DICOM writing and reading: the writer's geometry round trip, and one line for each bad series."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from gliograde.data.errors import DataError
from gliograde.ingest.dicom_volume import read_dicom_series
from gliograde.ingest.dicom_write import write_dicom_series


def _image(size=(16, 12, 8), spacing=(0.9, 1.1, 2.5), direction=None, origin=(-10.0, 20.5, 33.25),
           values: str = "int") -> sitk.Image:
    rng = np.random.default_rng(0)
    shape = size[::-1]
    voxels = rng.integers(-300, 3000, size=shape).astype(np.int16) if values == "int" \
        else rng.normal(0, 1, size=shape).astype(np.float32)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _rotation(ax: float, ay: float, az: float) -> tuple[float, ...]:
    transform = sitk.Euler3DTransform((0, 0, 0), np.deg2rad(ax), np.deg2rad(ay), np.deg2rad(az))
    return transform.GetMatrix()


SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # rows along y, columns along -z
OBLIQUE = _rotation(17.0, -9.0, 23.0)


def _read_folder(folder) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _assert_same_geometry(read: sitk.Image, image: sitk.Image) -> None:
    assert read.GetSize() == image.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("direction", [None, SAGITTAL, OBLIQUE], ids=["axial", "sagittal", "oblique"])
def test_written_series_reads_back_with_the_same_geometry_and_voxels(tmp_path, direction):
    image = _image(direction=direction)
    files = write_dicom_series(image, tmp_path / "s", patient_id="P1", series_description="T1 POST")
    assert len(files) == 8 and all(f.exists() for f in files)
    read = _read_folder(tmp_path / "s")
    _assert_same_geometry(read, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))
    ds = pydicom.dcmread(files[0])
    assert ds.PatientID == "P1" and ds.SeriesDescription == "T1 POST" and ds.Modality == "MR"
    assert float(ds.SpacingBetweenSlices) == pytest.approx(2.5) and float(ds.SliceThickness) == 2.5
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in files}) == 8


def test_float_voxels_are_stored_with_a_rescale_slope(tmp_path):
    image = _image(values="float", direction=OBLIQUE)
    write_dicom_series(image, tmp_path / "s", patient_id="P1", series_description="FLAIR")
    read = _read_folder(tmp_path / "s")
    voxels = sitk.GetArrayFromImage(image)
    step = np.abs(voxels).max() / 32767
    np.testing.assert_allclose(sitk.GetArrayFromImage(read), voxels, atol=step)
    _assert_same_geometry(read, image)


def test_left_handed_direction_is_written_as_the_same_physical_image(tmp_path):
    image = _image(direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))
    write_dicom_series(image, tmp_path / "s", patient_id="P1", series_description="T2")
    read = _read_folder(tmp_path / "s")
    resampled = sitk.Resample(read, image, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(image))


# --- reading a series: one regular stack, or one line naming the problem ------------------------

def _series(tmp_path, name="s", **kwargs):
    image = _image(**kwargs)
    return image, write_dicom_series(image, tmp_path / name, patient_id="P1", series_description=name)


def _edit(files, **attributes):
    for f in files:
        ds = pydicom.dcmread(f)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(f)


def _refused(files, *needles):
    with pytest.raises(DataError) as err:
        read_dicom_series(files, "P1", "AX FLAIR")
    line = str(err.value)
    assert "\n" not in line and line.startswith("patient P1: series 'AX FLAIR' (")
    for needle in needles:
        assert needle in line, line
    return line


def test_files_in_any_order_are_read_sorted_along_the_normal(tmp_path):
    image, files = _series(tmp_path, direction=OBLIQUE)
    shuffled = [files[i] for i in (5, 0, 7, 2, 1, 6, 3, 4)]
    read = read_dicom_series(shuffled, "P1", "s")
    _assert_same_geometry(read, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))


def test_each_slice_s_own_rescale_slope_is_applied_in_float(tmp_path):
    image, files = _series(tmp_path)
    expected = sitk.GetArrayFromImage(image).astype(np.float32)
    for z, f in enumerate(files[1:], start=1):  # slice z: stored 2v+1 with slope 0.5, intercept 0.25
        ds = pydicom.dcmread(f)
        ds.PixelData = (ds.pixel_array.astype(np.int16) * 2 + 1).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "0.25"
        ds.save_as(f)
        expected[z] += 0.75
    read = read_dicom_series(files, "P1", "s")
    assert read.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), expected)


def test_missing_slices_are_one_line_with_the_gap(tmp_path):
    _, files = _series(tmp_path)
    _refused(files[:3] + files[5:], "missing slices", "gap of 7.50 mm", "about 2 slice(s) missing")


def test_slices_of_two_orientations_are_one_line(tmp_path):
    _, axial = _series(tmp_path, "a")
    _, sagittal = _series(tmp_path, "b", direction=SAGITTAL)
    _refused(axial + sagittal[:2], "2 orientations", "axial x8", "sagittal x2")


def test_slices_of_two_sizes_are_one_line(tmp_path):
    _, files = _series(tmp_path)
    _, small = _series(tmp_path, "small", size=(12, 12, 8), origin=(-10.0, 20.5, 53.25))
    _refused(files + small, "different sizes", "16x12 x8", "12x12 x8")


def test_a_4d_series_is_one_line(tmp_path):
    _, first = _series(tmp_path, "t1")
    _, second = _series(tmp_path, "t2")
    _edit(first, TemporalPositionIdentifier=1)
    _edit(second, TemporalPositionIdentifier=2)
    _refused(first + second, "4D series", "2 images at each of 8 slice positions", "temporal positions")


def test_a_repeated_slice_position_is_one_line_and_a_copied_file_is_kept_once(tmp_path):
    _, files = _series(tmp_path)
    _, other = _series(tmp_path, "other")
    _refused(files + other[3:4], "1 slice(s) repeat", "9 slices at 8 positions")
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(files[3].read_bytes())
    assert read_dicom_series([*files, copy], "P1", "s").GetSize() == (16, 12, 8)


def test_one_slice_is_one_line(tmp_path):
    _, files = _series(tmp_path)
    _refused(files[:1], "one slice")


def test_slices_shifted_in_plane_are_one_line(tmp_path):
    _, files = _series(tmp_path)
    for z, f in enumerate(files):  # a gantry tilt: each slice 0.5 mm further along y
        ds = pydicom.dcmread(f)
        x, y, zz = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * z, zz]
        ds.save_as(f)
    _refused(files, "shifted in plane")


def test_rle_compressed_series_is_decoded(tmp_path):
    image, files = _series(tmp_path)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == RLELossless
    read = read_dicom_series(files, "P1", "s")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("compressor, syntax", [("JPEG", "1.2.840.10008.1.2.4.70"),
                                                ("JPEG2000", "1.2.840.10008.1.2.4.90")])
def test_jpeg_lossless_and_jpeg2000_series_are_decoded(tmp_path, compressor, syntax):
    image, files = _series(tmp_path, direction=OBLIQUE)
    for f in files:  # SimpleITK's GDCM writer compresses each slice, keeping its tags
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(f))
        writer.KeepOriginalImageUIDOn()
        writer.SetUseCompression(True)
        writer.SetCompressor(compressor)
        writer.Execute(sitk.ReadImage(str(f)))
    assert pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    read = read_dicom_series(files, "P1", "s")
    _assert_same_geometry(read, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))


def test_a_file_cut_short_in_its_pixel_data_is_named_in_one_line(tmp_path):
    _, files = _series(tmp_path)
    files[3].write_bytes(files[3].read_bytes()[:-100])
    _refused(files, f"({files[3]}): pixel data is 284 bytes where 12x16 pixels need 384 (truncated file?)")


def _fake_encapsulated(files, syntax: str, payload: bytes) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([payload])
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)


def test_a_transfer_syntax_simpleitk_cannot_decode_is_one_line_before_decoding(tmp_path):
    _, files = _series(tmp_path)
    _fake_encapsulated(files, "1.2.840.10008.1.2.4.201", b"\xff\x4f\xff\x51" + b"\0" * 64)
    _refused(files, "High-Throughput JPEG 2000", "1.2.840.10008.1.2.4.201", "cannot be decoded")


def test_damaged_compressed_pixel_data_is_one_line_naming_the_transfer_syntax(tmp_path):
    _, files = _series(tmp_path)
    _fake_encapsulated(files, RLELossless, b"\x01\0\0\0" + b"\0" * 60 + b"\x05" * 10)
    _refused(files, "cannot be decoded", "RLE Lossless (1.2.840.10008.1.2.5)")

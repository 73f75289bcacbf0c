"""DICOM writing and reading: the writer's geometry round trip, and one line for each bad series."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

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

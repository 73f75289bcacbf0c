"""Write a 3D SimpleITK image as a classic DICOM MR series (one file per slice)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

INT16_MAX = 32767


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters, as precise as DICOM's DS allows."""
    return format_number_as_ds(float(value))


def _int16_scaling(voxels: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored int16 values with the rescale slope and intercept that give the voxels back.

    Integer voxels within int16 are stored as they are (slope 1); anything else is scaled by
    ``max|v| / 32767`` with intercept 0, so zero stays exactly zero.
    """
    if not np.all(np.isfinite(voxels)):
        raise ValueError("the image holds NaN or infinite voxels; DICOM cannot store them")
    integral = np.array_equal(voxels, np.round(voxels))
    low, high = (float(voxels.min()), float(voxels.max())) if voxels.size else (0.0, 0.0)
    if integral and -32768 <= low and high <= INT16_MAX:
        return voxels.astype(np.int16), 1.0, 0.0
    peak = max(abs(low), abs(high)) or 1.0
    slope = peak / INT16_MAX
    return np.round(voxels / slope).astype(np.int16), slope, 0.0


def write_dicom_series(
    image: sitk.Image,
    folder: Path,
    *,
    patient_id: str,
    series_description: str,
    series_number: int = 1,
    study_uid: str | None = None,
    series_uid: str | None = None,
    protocol_name: str | None = None,
    image_type: str = "ORIGINAL\\PRIMARY\\M\\ND",
    file_prefix: str = "IM",
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write one MR Image Storage file per z slice of ``image`` into ``folder``; return the paths.

    Geometry follows the image exactly: ImageOrientationPatient from the direction's first two
    columns (any cosines: sagittal, oblique), ImagePositionPatient of each slice's first voxel,
    PixelSpacing, SliceThickness and SpacingBetweenSlices from the spacing, so SimpleITK reads
    the folder back with the same origin, spacing, direction and voxels. A left-handed direction
    (third column opposite to the cross product of the first two) cannot be a DICOM stack: its
    slices are written in reverse so the series is the same physical image on a right-handed
    grid. Voxels are int16, with a rescale slope where they are not int16 integers. ``extra``
    sets further attributes by keyword on every slice (e.g. ``{"Manufacturer": "GE"}``).
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"need a 3D scalar image, got {image.GetDimension()}D with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s)")
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    if np.dot(np.cross(direction[:, 0], direction[:, 1]), direction[:, 2]) < 0:
        image = sitk.Flip(image, [False, False, True], flipAboutOrigin=False)
        direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored, slope, intercept = _int16_scaling(sitk.GetArrayFromImage(image).astype(np.float64))
    spacing = image.GetSpacing()
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    now = datetime.datetime.now()
    orientation = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    paths = []
    for z in range(stored.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{file_prefix}{z + 1:05d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.PatientID = patient_id
        ds.PatientName = patient_id
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
        ds.SeriesNumber = series_number
        ds.InstanceNumber = z + 1
        ds.SeriesDescription = series_description
        if protocol_name is not None:
            ds.ProtocolName = protocol_name
        ds.ImageType = image_type.split("\\")
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = orientation
        ds.SliceLocation = _ds(float(np.dot(position, direction[:, 2])))
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleType = "US"
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        ds.PixelData = np.ascontiguousarray(stored[z]).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


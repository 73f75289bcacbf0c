"""Read one hospital NIfTI scan (any orientation and spacing) as a SimpleITK image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from gliograde.data.errors import DataError
from gliograde.ingest.dicom_volume import plane_of

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SHEAR_TOLERANCE = 1e-3  # largest |cos| between two voxel axes taken as orthogonal


def _affine(header: nib.Nifti1Header, patient: str, path: Path) -> np.ndarray:
    """The voxel-to-RAS affine a reader uses: the sform where set, else the qform."""
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    if qcode == 0 and scode == 0:
        raise DataError(
            "qform and sform are both unset (codes 0): where the image lies in the scanner is "
            "unknown; convert the scan again with its orientation (e.g. dcm2niix)", patient, path)
    if scode > 0:
        affine = header.get_sform()
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise DataError(
                "sform_code is set but the sform matrix is zero or singular; fix the sform, or set "
                "sform_code to 0 to use the qform", patient, path)
        return affine
    if np.any(np.asarray(header.get_zooms()[:3]) <= 0):
        raise DataError(f"voxel size {tuple(header.get_zooms()[:3])} is not positive", patient, path)
    return header.get_qform()


def check_nifti_header(path: Path, patient: str) -> dict[str, Any]:
    """Check a NIfTI file from its header alone (no voxels decoded); return its details.

    One line each for: unreadable, not 3D (2D, or 4D with several volumes), qform and sform both
    unset or a zero sform, a shear in the affine (voxel axes not orthogonal).
    """
    path = Path(path)
    try:
        image = nib.load(str(path))
        header = image.header
    except Exception as err:  # nibabel raises many types for a damaged header
        raise DataError(f"unreadable NIfTI ({type(err).__name__}: {err})", patient, path) from err
    if not isinstance(header, nib.Nifti1Header):
        raise DataError(f"not a NIfTI file ({type(image).__name__})", patient, path)
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 3:
        raise DataError(f"volume is {len(shape)}D {shape}, not 3D", patient, path)
    if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
        raise DataError(
            f"4D NIfTI {shape}: {int(np.prod(shape[3:]))} volumes; give one 3D volume per "
            "modality (e.g. split it with fslsplit and keep the first)", patient, path)
    affine = _affine(header, patient, path)
    matrix = affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    axes = matrix / spacing
    off = np.abs(axes.T @ axes - np.eye(3)).max()
    if off > _SHEAR_TOLERANCE:
        angle = np.degrees(np.arcsin(min(1.0, off)))
        raise DataError(
            f"the affine has a shear (voxel axes {angle:.1f} degrees from orthogonal, a gantry "
            "tilt?): resample it to an orthogonal grid first", patient, path)
    if not path.name.lower().endswith(".gz"):
        needed = int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
        if path.stat().st_size < needed:
            raise DataError(f"truncated: {path.stat().st_size} bytes where the header needs {needed}; "
                            "copy the file again", patient, path)
    code = "".join(nib.aff2axcodes(affine))
    return {"size": list(shape[:3]), "spacing": [round(float(s), 4) for s in spacing],
            "orientation": code, "plane": plane_of(axes[:, 2]),
            "affine_source": "sform" if int(header["sform_code"]) > 0 else "qform",
            "datatype": str(header.get_data_dtype())}


def read_nifti_scan(path: Path, patient: str) -> sitk.Image:
    """The scan as a 3D float32 SimpleITK image in LPS physical space; one line for a bad file.

    The geometry is SimpleITK's reading of the header; the voxels are decoded by nibabel, which
    refuses a truncated file (SimpleITK's NIfTI reader fills missing voxels in silently).
    """
    path = Path(path)
    details = check_nifti_header(path, patient)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        voxels = np.asanyarray(nib.load(str(path), mmap=False).dataobj)
    except Exception as err:  # SimpleITK (RuntimeError), gzip/zlib and nibabel raise many types
        lines = str(err).strip().splitlines()
        problem = f"{type(err).__name__}: {lines[-1] if lines else 'read failed'}"
        raise DataError(f"unreadable NIfTI ({problem}); copy or convert it again", patient, path) from err
    if voxels.dtype.fields is not None or reader.GetNumberOfComponents() != 1:
        raise DataError("RGB or vector voxels: give a greyscale scan", patient, path)
    voxels = voxels.reshape(voxels.shape[:3])  # a trailing axis of length 1 (x, y, z, 1) goes
    voxels = voxels.astype(np.float32)  # as DICOM series are read: float32, scaling applied
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels.transpose(2, 1, 0)))
    dimension = reader.GetDimension()
    image.SetOrigin(reader.GetOrigin()[:3])
    image.SetSpacing(reader.GetSpacing()[:3])
    image.SetDirection(tuple(np.reshape(reader.GetDirection(), (dimension, dimension))[:3, :3].ravel()))
    expected = _RAS_TO_LPS @ _affine(nib.load(str(path)).header, patient, path)
    got = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    if not (np.allclose(got, expected[:3, :3], atol=1e-3)
            and np.allclose(image.GetOrigin(), expected[:3, 3], atol=1e-2)):
        raise DataError(f"SimpleITK reads another geometry than the file's {details['affine_source']}"
                        " (qform and sform disagree?); make them agree, e.g. set qform to the sform",
                        patient, path)
    return image

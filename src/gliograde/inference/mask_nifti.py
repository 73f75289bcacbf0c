"""A predicted tumour mask written back as NIfTI on the grid of the scan it was predicted from.

The model sees a volume reoriented to its contract's axis codes (and, with ``resample=true``,
resampled onto its grid); the mask it predicts lives there. Writing it out undoes both, so the
file overlays the input scan voxel for voxel in any viewer.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

MASK_SUFFIX = "_predicted_mask.nii.gz"


def to_file_axes(mask_zyx: np.ndarray, affine: np.ndarray, reorient: str | None) -> np.ndarray:
    """A ``[z, y, x]`` mask in the model's axes back in the axes of the file whose ``affine``
    it was read with (the inverse of ``data.nifti.read_voxels(..., reorient)``, then ``.T``)."""
    data = np.asarray(mask_zyx).T  # nibabel's (x, y, z) order, still in the model's axis codes
    if not reorient:
        return data
    orientations = nib.orientations
    back = orientations.ornt_transform(
        orientations.axcodes2ornt(tuple(reorient)), orientations.io_orientation(affine)
    )
    return orientations.apply_orientation(data, back)


def write_mask(
    mask_zyx: np.ndarray,
    target: Path,
    reference: Path,
    reorient: str | None,
    model_grid: tuple[np.ndarray, tuple[int, int, int]] | None = None,
) -> Path:
    """Write ``mask_zyx`` (bool, the model's axes) to ``target`` as uint8 NIfTI on the grid of
    the scan ``reference``. ``model_grid`` is the (affine, shape) the mask was predicted on when
    the scan was resampled for the model: the mask is then resampled back (nearest neighbour)."""
    scan = nib.load(str(reference))
    affine = np.asarray(scan.affine, dtype=np.float64)
    if model_grid is None:
        data = to_file_axes(mask_zyx, affine, reorient).astype(np.uint8)
        image = nib.Nifti1Image(data, affine)
    else:
        from nibabel.processing import resample_from_to

        grid_affine, _ = model_grid
        moved = nib.Nifti1Image(to_file_axes(mask_zyx, grid_affine, reorient).astype(np.uint8), grid_affine)
        shape = tuple(int(s) for s in scan.shape[:3])
        back = resample_from_to(moved, (shape, affine), order=0, mode="constant", cval=0)
        image = nib.Nifti1Image(np.asarray(back.dataobj).astype(np.uint8), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}.nii.gz")
    try:
        nib.save(image, str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target

"""A predicted mask written back lands on the input scan's own grid, voxel for voxel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from gliograde.data.discovery.nifti import read_voxels
from gliograde.inference.mask_nifti import write_mask


def _scan(path, affine, shape=(12, 10, 8)):
    rng = np.random.default_rng(0)
    data = np.zeros(shape, dtype=np.uint8)
    data[3:7, 2:5, 1:6] = 1  # an asymmetric block: any flip or swap moves it
    data[8, 7, 6] = 1
    nib.save(nib.Nifti1Image(data, affine), str(path))
    nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), affine), str(path.with_name("t1.nii.gz")))
    return data


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([1.0, 1.0, 1.0, 1.0]),
        np.diag([-1.0, -1.0, 2.0, 1.0]),  # LPS, as scanners and DICOM store it
        np.array([[0, 0, 1.5, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]]),  # permuted axes
    ],
)
def test_written_mask_matches_the_scan_grid(tmp_path, affine):
    truth = _scan(tmp_path / "seg.nii.gz", affine)
    reference = tmp_path / "t1.nii.gz"
    model_view = read_voxels(tmp_path / "seg.nii.gz", "p", "RAS").T.astype(bool)  # the model's [z, y, x]
    out = write_mask(model_view, tmp_path / "p_predicted_mask.nii.gz", reference, "RAS")
    written = nib.load(str(out))
    assert np.array_equal(np.asarray(written.dataobj), truth)
    assert np.allclose(written.affine, affine)
    assert written.get_data_dtype() == np.uint8
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_mask_of_a_resampled_scan_is_resampled_back(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    truth = _scan(tmp_path / "seg.nii.gz", affine)
    from nibabel.processing import resample_from_to

    grid_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    grid_affine[:3, 3] = -0.5  # voxel centres of the fine grid inside the coarse voxels
    fine = resample_from_to(nib.load(str(tmp_path / "seg.nii.gz")), ((24, 20, 16), grid_affine), order=0)
    model_view = np.asarray(fine.dataobj).T.astype(bool)
    out = write_mask(
        model_view, tmp_path / "m.nii.gz", tmp_path / "t1.nii.gz", "RAS", model_grid=(grid_affine, (24, 20, 16))
    )
    written = np.asarray(nib.load(str(out)).dataobj)
    assert written.shape == truth.shape
    assert np.array_equal(written, truth)

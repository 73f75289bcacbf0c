"""The agreement benchmark's control and its discrimination line, on tiny volumes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd

from benchmarks.ingest_agreement import _blurred_copies, _discrimination


def test_the_blurred_control_smooths_the_brain_and_keeps_the_air(tmp_path):
    rng = np.random.default_rng(0)
    voxels = np.zeros((16, 16, 8), np.float32)
    voxels[3:13, 3:13, 2:6] = 100 + rng.normal(0, 10, (10, 10, 4))
    (tmp_path / "orig" / "P1").mkdir(parents=True)
    nib.save(nib.Nifti1Image(voxels, np.diag([-1.0, -1, 1, 1])), str(tmp_path / "orig" / "P1" / "P1_t1.nii.gz"))
    out = _blurred_copies(tmp_path / "orig", 0.6, tmp_path / "blurred")
    image = nib.load(str(out / "P1" / "P1_t1.nii.gz"))
    blurred = np.asarray(image.dataobj)
    np.testing.assert_array_equal(image.affine, np.diag([-1.0, -1, 1, 1]))
    assert ((blurred > 0) == (voxels > 0)).all()
    inner = (slice(5, 11), slice(5, 11), slice(3, 5))
    assert blurred[inner].std() < 0.8 * voxels[inner].std()


def test_discrimination_is_the_auroc_per_column_and_nothing_without_two_grades(tmp_path):
    (tmp_path / "name_mapping.csv").write_text(
        "Grade,BraTS_2020_subject_ID\nHGG,A\nLGG,B\nHGG,C\nLGG,D\n"
    )
    table = pd.DataFrame(
        {"p_originals": [0.9, 0.1, 0.8, 0.2], "p_ingested": [0.1, 0.9, 0.8, 0.2]}, index=["A", "B", "C", "D"]
    )
    assert _discrimination(tmp_path, table, "prob_HGG") == {"originals": 1.0, "ingested": 0.25}
    assert _discrimination(tmp_path, table.loc[["A", "C"]], "prob_HGG") == {}
    assert _discrimination(tmp_path / "nowhere", table, "prob_HGG") == {}

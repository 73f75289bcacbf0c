"""predict.py recognises a patient the model was trained on by its images, under any name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers.commands import run_python
from helpers.runs import tiny_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    return tiny_run(tmp_path_factory)


def test_a_renamed_training_patient_is_flagged(run, tmp_path):
    splits = pd.read_csv(run["run"] / "splits.csv", dtype=str)
    trained = sorted(splits.loc[splits["split"] == "train", "patient_id"])[0]
    tested = sorted(splits.loc[splits["split"] == "test", "patient_id"])[0]
    root = tmp_path / "new_patients"
    for name, source in (("visit_a", trained), ("visit_b", tested), ("visit_c", trained)):
        (root / name).mkdir(parents=True)
        for path in (run["cohort"] / source).iterdir():
            shutil.copy(path, root / name / path.name.replace(source, name))
    for modality in ("flair", "t1", "t1ce", "t2"):  # re-saved at 3x the intensity, as float32
        path = root / "visit_c" / f"visit_c_{modality}.nii"
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32) * 3, image.affine), path)
    result = run_python(
        "predict.py",
        f"ckpt={run['run']}",
        f"input={root}",
        "files.flair=*_flair.nii",
        "files.t1=*_t1.nii",
        "files.t1ce=*_t1ce.nii",
        "files.t2=*_t2.nii",
        "files.mask=*_seg.nii",
        "gradcam=false",
        f"output_dir={tmp_path / 'out'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "predictions.json").read_text())
    by_id = {row["patient_id"]: row for row in report["patients"]}
    assert by_id["visit_a"]["training_patient"] == trained
    assert by_id["visit_b"]["training_patient"] is None
    assert by_id["visit_c"]["training_patient"] == trained  # the model's input is the same
    assert f"is the model's training patient {trained}" in result.stdout + result.stderr

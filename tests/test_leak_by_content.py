"""evaluate.py matches patients by their images, not their ids: renamed copies, re-saved files and
symlinks of training patients are leaks; another patient that reuses a training id is not."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers.commands import run_python
from helpers.runs import tiny_run

from gliograde.data.synthetic.generator import generate_cohort

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    return tiny_run(tmp_path_factory)


def _evaluate(run: dict[str, Path], root: Path, tmp_path: Path, *args: str):
    return run_python(
        "evaluate.py",
        f"run_dir={run['run']}",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "split=all",
        "bootstrap=20",
        "gradcam_n=0",
        f"output_dir={tmp_path / 'eval'}",
        *args,
    )


def _training_ids(run: dict[str, Path]) -> list[str]:
    splits = pd.read_csv(run["run"] / "splits.csv", dtype=str)
    return sorted(splits.loc[splits["split"] == "train", "patient_id"])


def _clone(source: Path, patient: str, root: Path, new_id: str, how: str) -> None:
    """``patient`` of ``source`` as ``new_id`` in ``root``: copied, re-saved as .nii.gz, or symlinked."""
    folder = root / new_id
    folder.mkdir()
    for path in (source / patient).iterdir():
        target = folder / path.name.replace(patient, new_id)
        if how == "copy":
            shutil.copy2(path, target)
        elif how == "resave":  # the other of .nii and .nii.gz: other bytes, the same voxels
            name = target.name.removesuffix(".gz") if target.name.endswith(".gz") else target.name + ".gz"
            nib.save(nib.load(path), target.with_name(name))
        else:
            target.symlink_to(path)
    rows = (source / "name_mapping.csv").read_text().splitlines()
    row = next(line for line in rows if line.endswith("," + patient))
    with open(root / "name_mapping.csv", "a") as fh:
        fh.write(row[: -len(patient)] + new_id + "\n")


def _repackaged_cohort(run: dict[str, Path], root: Path) -> None:
    """Three training patients under new ids (a copy, a re-saved copy, symlinks) and
    three patients of the cohort's own."""
    generate_cohort(root, patients=3, seed=99, shape=(40, 40, 20), lgg_fraction=0.34, compress=False)
    for number, (patient, how) in enumerate(zip(_training_ids(run), ("copy", "resave", "link"))):
        _clone(run["cohort"], patient, root, f"BraTS20_Training_{201 + number}", how)


def test_renamed_resaved_and_symlinked_training_patients_are_refused(run, tmp_path):
    root = tmp_path / "other_site"
    _repackaged_cohort(run, root)
    result = _evaluate(run, root, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert "3 of the 6 patients to evaluate" in line and "training split" in line
    assert "BraTS20_Training_201 (as " in line and "Traceback" not in result.stderr

    allowed = _evaluate(run, root, tmp_path, "allow_leak=true")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "figures are inflated" in allowed.stdout + allowed.stderr
    notes = json.loads((tmp_path / "eval" / "metrics.json").read_text())["identity_notes"]
    [note] = [n for n in notes if n.startswith("3 of the 6 patients to evaluate")]
    assert note.endswith("the figures are inflated)") and f"Warning: {note}" in allowed.stdout
    assert "Warning: 3 of the 6 patients to evaluate" in (tmp_path / "eval" / "report.html").read_text()


def test_a_training_id_reused_for_other_images_is_a_collision_not_a_leak(run, tmp_path):
    root = tmp_path / "same_ids"  # the same generator names its patients BraTS20_Training_001...
    generate_cohort(root, patients=6, seed=1234, shape=(40, 40, 20), lgg_fraction=0.5, compress=False)
    shared = set(_training_ids(run)) & {p.name for p in root.iterdir() if p.is_dir()}
    assert shared
    result = _evaluate(run, root, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "id collisions, not leaks" in line]
    assert len(lines) == 2  # logged when found, and repeated under the report's table
    line = lines[0]
    assert f"{len(shared)} patient(s) share their id with a training patient" in line
    assert sorted(shared)[0] in line
    # the report says it too: in metrics.json, the printed summary and report.html
    [said] = json.loads((tmp_path / "eval" / "metrics.json").read_text())["identity_notes"]
    assert said in line and said.startswith(f"{len(shared)} patient(s) share their id")
    assert result.stdout.count(f"Warning: {said}") == 1
    page = (tmp_path / "eval" / "report.html").read_text()
    assert f'<p class="warning">Warning: {html.escape(said)}</p>' in page


def test_a_training_patient_rescaled_under_a_new_id_is_refused(run, tmp_path):
    """Intensities x2 (stored as float32): other voxels, the same z-scored input to the model."""
    root = tmp_path / "rescaled"
    generate_cohort(root, patients=2, seed=98, shape=(40, 40, 20), lgg_fraction=0.5, compress=False)
    trained = _training_ids(run)[0]
    _clone(run["cohort"], trained, root, "BraTS20_Training_207", "copy")
    for path in (root / "BraTS20_Training_207").iterdir():
        if not path.name.endswith("_seg.nii"):
            image = nib.load(path)
            data = np.asarray(image.dataobj, dtype=np.float32) * 2
            nib.save(nib.Nifti1Image(data, image.affine), path)
    result = _evaluate(run, root, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert f"1 of the 3 patients to evaluate (e.g. BraTS20_Training_207 (as {trained}): same " in line
    assert "training split" in line and "Traceback" not in result.stderr


def test_another_runs_checkpoint_is_checked_against_its_own_training_patients(run, tmp_path):
    """run_dir=B ckpt=A/checkpoints/X.ckpt: A's training patients count, not B's."""
    other = tmp_path / "other_run"
    shutil.copytree(run["run"], other, ignore=shutil.ignore_patterns("checkpoints", "eval*"))
    splits = pd.read_csv(other / "splits.csv", dtype=str)
    splits["split"] = "test"  # B trained on none of them
    splits.to_csv(other / "splits.csv", index=False)
    [checkpoint] = [p for p in (run["run"] / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    result = run_python(
        "evaluate.py",
        f"run_dir={other}",
        f"ckpt={checkpoint}",
        "split=all",
        "bootstrap=20",
        "gradcam_n=0",
        f"output_dir={tmp_path / 'eval'}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    n_trained = len(_training_ids(run))
    assert f"{n_trained} of the 16 patients to evaluate" in line and f"recorded in {checkpoint}" in line

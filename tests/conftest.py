"""Shared fixtures: a tiny synthetic cohort in the BraTS 2020 layout, made once per session."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gliograde.data.datamodule import GliomaDataModule
from gliograde.data.synthetic import generate_cohort

TINY_SHAPE = (40, 40, 20)
REPO = Path(__file__).resolve().parents[1]


def run_python(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root, as a user types it, with its output captured."""
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_cohort_master(tmp_path_factory) -> Path:
    """24 patients (8 LGG) of 40x40x20 voxels; never modified (copy it to change files)."""
    root = tmp_path_factory.mktemp("cohorts") / "tiny"
    # Uncompressed: tests rewrite and corrupt these files by their .nii names.
    generate_cohort(root, patients=24, seed=3, shape=TINY_SHAPE, lgg_fraction=1 / 3, compress=False)
    return root


@pytest.fixture
def tiny_cohort(tiny_cohort_master, tmp_path) -> Path:
    """A private, writable copy of the tiny cohort."""
    root = tmp_path / "cohort"
    shutil.copytree(tiny_cohort_master, root)
    return root


def make_datamodule(root: Path, cache_dir: Path, **overrides) -> GliomaDataModule:
    """A DataModule on the BraTS 2020 preset, quiet and single-process unless overridden."""
    options = dict(
        root=root,
        cache_dir=cache_dir,
        batch_size=8,
        progress=False,
        preprocess={"workers": 1},
        slices={"strategy": "tumor_topk", "k": 4},
    )
    options.update(overrides)
    return GliomaDataModule(**options)


def patient_file(root: Path, patient: str, suffix: str) -> Path:
    """Path of ``patient``'s ``suffix`` file (flair, t1, t1ce, t2 or seg)."""
    return root / patient / f"{patient}_{suffix}.nii"


def copy_patient(root: Path, source: str, new_id: str, label_from: Path | None = None) -> Path:
    """Copy ``source``'s folder under ``new_id`` (files renamed) and give it ``source``'s label row.

    The copy holds the very same images: the case of a cohort that repackages a patient.
    """
    folder = root / new_id
    folder.mkdir()
    for path in (root / source).iterdir():
        shutil.copy2(path, folder / path.name.replace(source, new_id))
    mapping = root / "name_mapping.csv"
    lines = (label_from or mapping).read_text().splitlines()
    row = next(line for line in lines if line.endswith("," + source))
    mapping.write_text(mapping.read_text() + row[: -len(source)] + new_id + "\n")
    return folder

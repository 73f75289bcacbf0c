"""Building and editing small synthetic cohorts and the DataModules that read them."""

from __future__ import annotations

import shutil
from pathlib import Path

from gliograde.data.datamodule import GliomaDataModule

TINY_SHAPE = (40, 40, 20)


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

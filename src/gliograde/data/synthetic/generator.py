"""A synthetic stand-in for the BraTS 2020 training cohort.

``generate_cohort`` writes patient folders in exactly the BraTS 2020 training layout (four int16
MR modalities, a uint8 tumour mask with labels {0, 1, 2, 4}, the BraTS affine) plus a
``name_mapping.csv`` with the real columns, so every part of the pipeline can run without the
real data. Brains are noisy, bias-corrupted ellipsoids with white matter, grey matter and
ventricles; HGG tumours have an enhancing rim (label 4) around necrosis, LGG tumours a
non-enhancing core, both inside oedema. The grade is visible on an axial slice through the
tumour (mainly as the T1ce rim) but not in the per-scanner intensity scale.

``difficulty`` makes the grade cues overlap as in real gliomas. Each patient draws a latent
malignancy ``m`` in (0, 1) whose per-grade distributions separate the grades with an AUROC of
``1 - difficulty / 2``; ``m`` sets the enhancement, whether the core has a necrotic centre inside
an enhancing rim, the necrosis size and the oedema's extent, so some LGGs enhance and some HGGs
barely do. Scanner gain, bias field and noise also vary more between patients, and both grades
get unlabelled mimic lesions (an enhancing nodule or rim in a FLAIR-bright halo) across the brain
from the tumour: the grade is then told by the tumour alone, and a whole slice carries lesions
that look like a high-grade rim whatever the grade. ``difficulty=0`` is the cleanly separable
cohort (bit for bit as before the setting existed); 1 is chance.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from gliograde.data.synthetic.anatomy import MODALITY_FILES, _synthesize
from gliograde.data.synthetic.settings import (
    DEFAULT_LGG_FRACTION,
    DEFAULT_PATIENTS,
    DEFAULT_SEED,
    DEFAULT_SHAPE,
    GENERATOR_VERSION,
    SETTINGS_FILE,
    _check_difficulty,
    _check_shape,
    generation_settings,
    settings_mismatch,
    _lgg_count,
)
from gliograde.errors import ConfigError, GliogradeError
from gliograde.files.atomic import write_frame

log = logging.getLogger(__name__)


COMPRESSLEVEL = 1
"""gzip level of the written NIfTI: 1 shrinks the noisy volumes about 7.7x; higher levels gain
under 4 % more for over twice the time."""

MAPPING_FILE = "name_mapping.csv"
MAPPING_COLUMNS: tuple[str, ...] = (
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
)


class CohortExistsError(GliogradeError, FileExistsError):
    """The output folder of a synthetic cohort exists and holds something else."""

def brats_affine(shape: Sequence[int]) -> np.ndarray:
    """The voxel-to-world affine of BraTS 2020 files: ``diag(-1, -1, 1, 1)``, y offset ``Y-1``."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def synthesize_patient(
    rng: np.random.Generator, grade: str, shape: Sequence[int] = DEFAULT_SHAPE, difficulty: float = 0.0
) -> dict[str, np.ndarray]:
    """One synthetic patient: ``flair, t1, t1ce, t2`` (int16) and ``seg`` (uint8) arrays.

    Arrays are in (x, y, z) order as nibabel returns them, Fortran-contiguous (the NIfTI on-disk
    order). Everything is drawn from ``rng``; ``grade`` is ``"HGG"`` or ``"LGG"``; ``difficulty``
    in [0, 1] sets how much the grade cues overlap (see the module docstring).
    """
    volumes, _ = _synthesize(rng, grade, shape, with_tissue=False, difficulty=difficulty)
    return volumes


def ensure_cohort(root: str | Path, settings: Mapping, progress: bool = True) -> None:
    """Generate the synthetic cohort ``settings`` describes under ``root`` unless it is there.

    ``root`` already holding a cohort generated with other settings is refused (one line naming
    the overrides that select it); a folder with files of unknown origin is taken as it is.
    Concurrent callers (one per node or rank) generate it once, under a lock beside ``root``.
    """
    root = Path(root)
    if _has_entries(root):
        made_with = generation_settings(root)
        problem = None if made_with is None else settings_mismatch(made_with, settings)
        if problem:
            raise ConfigError(f"{root} {problem}")
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f".{root.name}.lock")):
        if not _has_entries(root):
            log.info("Generating the synthetic cohort (%d patients) in %s", settings["patients"], root)
            if root.exists():
                root.rmdir()
            generate_cohort(root, **dict(settings), progress=progress)


def _has_entries(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def generate_cohort(
    out: str | Path,
    patients: int = DEFAULT_PATIENTS,
    seed: int = DEFAULT_SEED,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    lgg_fraction: float = DEFAULT_LGG_FRACTION,
    difficulty: float = 0.0,
    progress: bool = False,
    compress: bool = True,
) -> Path:
    """Write a synthetic BraTS-2020-layout cohort of ``patients`` under ``out``; return ``out``.

    ``difficulty`` defaults to 0 here (grades cleanly separable, what tests that need a sure
    signal rely on); the CLI and the data preset default to :data:`DEFAULT_DIFFICULTY`.
    Volumes are written as ``.nii.gz`` (gzip level :data:`COMPRESSLEVEL`), or ``.nii`` if not
    ``compress``; the voxels are the same either way.

    The cohort is built in a hidden sibling folder and renamed into place only when complete.
    Output is byte-identical for equal arguments, and patient ``i``'s volumes depend only on
    ``seed``, ``i``, its grade and ``difficulty``. Raises ``FileExistsError`` if ``out`` exists
    and is not an empty folder, ``ValueError`` (``ConfigError``) for bad arguments.
    """
    shape = _check_shape(shape)
    if isinstance(patients, bool) or not isinstance(patients, (int, np.integer)) or patients < 1:
        raise ConfigError(f"synthetic cohort: patients must be a positive integer, got {patients!r}")
    if not 0.0 <= lgg_fraction <= 1.0:
        raise ConfigError(f"synthetic cohort: lgg_fraction must be in [0, 1], got {lgg_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"synthetic cohort: seed must be a non-negative integer, got {seed!r}")
    difficulty = _check_difficulty(difficulty)
    patients, seed = int(patients), int(seed)
    suffix = ".nii.gz" if compress else ".nii"

    out = Path(out)
    _refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _make_partial_dir(out)
    try:
        grades = assign_grades(patients, seed, lgg_fraction)
        width = max(3, len(str(patients)))
        affine = brats_affine(shape)
        rows = []
        # zlib releases the GIL: a patient's five files compress side by side.
        with ThreadPoolExecutor(max_workers=len(MODALITY_FILES) + 1) as pool:
            for index in _progress(range(patients), progress):
                name = f"BraTS20_Training_{index + 1:0{width}d}"
                image_seq, meta_seq = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(2)
                rng = np.random.default_rng(image_seq)
                volumes = synthesize_patient(rng, grades[index], shape, difficulty)
                folder = partial / name
                folder.mkdir()
                writes = [
                    pool.submit(_write_nifti, folder / f"{name}_{key}{suffix}", array, affine)
                    for key, array in volumes.items()
                ]
                for write in writes:
                    write.result()
                rows.append(_mapping_row(np.random.default_rng(meta_seq), grades[index], index, width, name))
        write_frame(partial / MAPPING_FILE, pd.DataFrame(rows, columns=list(MAPPING_COLUMNS)))
        settings = {
            "patients": patients,
            "seed": seed,
            "shape": list(shape),
            "lgg_fraction": lgg_fraction,
            "difficulty": difficulty,
            "generator": GENERATOR_VERSION,
        }
        (partial / SETTINGS_FILE).write_text(json.dumps(settings, sort_keys=True) + "\n")
        try:
            os.replace(partial, out)  # POSIX renames over an empty folder, never a full one
        except OSError as err:
            raise CohortExistsError(
                f"synthetic cohort: {out} appeared while generating and is not empty ({err})"
            ) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def assign_grades(patients: int, seed: int, lgg_fraction: float) -> list[str]:
    """Grades of a cohort in patient order: ``round(patients * lgg_fraction)`` LGG (at least one
    of each grade when ``patients >= 2``), shuffled by ``seed``."""
    n_lgg = _lgg_count(patients, lgg_fraction)
    grades = np.array(["LGG"] * n_lgg + ["HGG"] * (patients - n_lgg))
    # The root sequence itself is the grade stream; patients use its children (spawn keys).
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    return [str(g) for g in rng.permutation(grades)]


# --------------------------------------------------------------------------------------------
# Anatomy and intensities


# --------------------------------------------------------------------------------------------
# Files


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` as a NIfTI-1 file, gzip-compressed if ``path`` ends in ``.gz``."""
    import nibabel as nib  # here, so importing the defaults (e.g. for the config schema) stays light

    img = nib.Nifti1Image(array, affine)
    img.set_data_dtype(array.dtype)
    header = img.header
    header.set_xyzt_units("mm", "sec")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_slope_inter(1.0, 0.0)  # explicit "no scaling"; nibabel keeps it on write
    data = img.to_bytes()
    if path.name.endswith(".gz"):
        # mtime=0 keeps the bytes (not only the voxels) equal for equal settings.
        data = gzip.compress(data, compresslevel=COMPRESSLEVEL, mtime=0)
    path.write_bytes(data)


def _mapping_row(rng: np.random.Generator, grade: str, index: int, width: int, name: str) -> list[str]:
    """A plausible name_mapping.csv row: like the real file, subjects new in a later challenge
    year have ``NA`` for the earlier ones, and only some have a TCGA id."""
    first_year = rng.choice([2017, 2019, 2020], p=[0.77, 0.14, 0.09])
    k = f"{index + 1:0{width}d}"
    b17 = f"Brats17_SYN_{k}_1" if first_year <= 2017 else "NA"
    b18 = f"Brats18_SYN_{k}_1" if first_year <= 2018 else "NA"
    b19 = f"BraTS19_SYN_{k}_1" if first_year <= 2019 else "NA"
    tcga = "NA"
    if rng.uniform() < 0.3:
        tcga = f"TCGA-{rng.integers(10, 100)}-{rng.integers(0, 10000):04d}"
    return [grade, b17, b18, tcga, b19, name]


def _refuse_existing(out: Path) -> None:
    if out.is_dir():
        if any(out.iterdir()):
            raise CohortExistsError(
                f"synthetic cohort: {out} already exists and is not empty; choose another folder or remove it"
            )
    elif out.exists() or out.is_symlink():
        raise CohortExistsError(f"synthetic cohort: {out} already exists and is not a folder")


def _make_partial_dir(out: Path) -> Path:
    while True:
        partial = out.parent / f".{out.name}.partial-{secrets.token_hex(6)}"
        try:
            partial.mkdir()  # plain mkdir (not mkdtemp) so the final folder gets umask permissions
            return partial
        except FileExistsError:
            continue


def _progress(items, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="synthetic cohort", unit="patient")

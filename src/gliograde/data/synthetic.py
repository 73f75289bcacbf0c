"""A synthetic stand-in for the BraTS 2020 training cohort.

``generate_cohort`` writes patient folders in exactly the BraTS 2020 training layout (four int16
MR modalities, a uint8 tumour mask with labels {0, 1, 2, 4}, the BraTS affine) plus a
``name_mapping.csv`` with the real columns, so every part of the pipeline can run without the
real data. Brains are noisy, bias-corrupted ellipsoids with white matter, grey matter and
ventricles; HGG tumours have an enhancing rim (label 4) around necrosis, LGG tumours a
non-enhancing core, both inside oedema. The grade is visible on an axial slice through the
tumour (mainly as the T1ce rim) but not in the per-scanner intensity scale.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from .specs import MODALITIES
from gliograde.errors import ConfigError, GliogradeError

DEFAULT_SHAPE: tuple[int, int, int] = (240, 240, 155)
DEFAULT_LGG_FRACTION: float = 76 / 369  # the BraTS 2020 training ratio
MIN_SHAPE: tuple[int, int, int] = (24, 24, 12)
"""Smallest accepted volume; HGG masks there still hold a few voxels each of labels 1, 2 and 4."""

MAPPING_FILE = "name_mapping.csv"
SETTINGS_FILE = ".synthetic.json"  # hidden: discovery ignores dot files
MAPPING_COLUMNS: tuple[str, ...] = (
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
)
GRADES: tuple[str, ...] = ("LGG", "HGG")

# Internal voxel classes; intensity and mask label are looked up from these.
_BG, _CSF, _GM, _WM, _OEDEMA, _CORE, _ENH = range(7)
_SEG_OF_CLASS = np.array([0, 0, 0, 0, 2, 1, 4], dtype=np.uint8)

# Typical intensities (arbitrary scanner units) per class: bg, CSF, GM, WM, oedema, core, enh.
# The core entry differs by grade: HGG necrosis vs LGG non-enhancing solid tumour.
_BASE = {
    "t1": {"healthy": (0, 250, 560, 820), "oedema": 480, "HGG": 220, "LGG": 360, "enh": 640},
    "t1ce": {"healthy": (0, 260, 600, 850), "oedema": 500, "HGG": 230, "LGG": 380, "enh": None},
    "t2": {"healthy": (0, 2000, 1000, 700), "oedema": 1450, "HGG": 1700, "LGG": 1550, "enh": 1150},
    "flair": {"healthy": (0, 120, 520, 380), "oedema": 950, "HGG": 500, "LGG": 880, "enh": 720},
}

# Per-modality gain of a few "scanners" (flair, t1, t1ce, t2); times a per-patient jitter of
# 0.9-1.1 this spans roughly 0.6-1.6, and it is drawn independently of the grade.
_SCANNERS = np.array(
    [
        [1.00, 1.00, 1.00, 1.00],
        [0.70, 1.30, 1.20, 0.80],
        [1.35, 0.75, 0.85, 1.25],
        [0.85, 1.15, 1.40, 0.70],
        [1.20, 0.90, 0.70, 1.40],
    ],
    dtype=np.float32,
)



class CohortExistsError(GliogradeError, FileExistsError):
    """The output folder of a synthetic cohort exists and holds something else."""

def brats_affine(shape: Sequence[int]) -> np.ndarray:
    """The voxel-to-world affine of BraTS 2020 files: ``diag(-1, -1, 1, 1)``, y offset ``Y-1``."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def synthesize_patient(
    rng: np.random.Generator, grade: str, shape: Sequence[int] = DEFAULT_SHAPE
) -> dict[str, np.ndarray]:
    """One synthetic patient: ``flair, t1, t1ce, t2`` (int16) and ``seg`` (uint8) arrays.

    Arrays are in (x, y, z) order as nibabel returns them, Fortran-contiguous (the NIfTI on-disk
    order). Everything is drawn from ``rng``; ``grade`` is ``"HGG"`` or ``"LGG"``.
    """
    volumes, _ = _synthesize(rng, grade, shape, with_tissue=False)
    return volumes


def generation_settings(root: str | Path) -> dict | None:
    """The settings a synthetic cohort under ``root`` was generated with (None if not ours)."""
    path = Path(root) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def generate_cohort(
    out: str | Path,
    patients: int,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    lgg_fraction: float = DEFAULT_LGG_FRACTION,
    progress: bool = False,
) -> Path:
    """Write a synthetic BraTS-2020-layout cohort of ``patients`` under ``out``; return ``out``.

    The cohort is built in a hidden sibling folder and renamed into place only when complete.
    Output is byte-identical for equal arguments, and patient ``i``'s volumes depend only on
    ``seed``, ``i`` and its grade. Raises ``FileExistsError`` if ``out`` exists and is not an
    empty folder, ``ValueError`` for bad arguments.
    """
    shape = _check_shape(shape)
    if isinstance(patients, bool) or not isinstance(patients, (int, np.integer)) or patients < 1:
        raise ConfigError(f"synthetic cohort: patients must be a positive integer, got {patients!r}")
    if not 0.0 <= lgg_fraction <= 1.0:
        raise ConfigError(f"synthetic cohort: lgg_fraction must be in [0, 1], got {lgg_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"synthetic cohort: seed must be a non-negative integer, got {seed!r}")
    patients, seed = int(patients), int(seed)

    out = Path(out)
    _refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _make_partial_dir(out)
    try:
        grades = assign_grades(patients, seed, lgg_fraction)
        width = max(3, len(str(patients)))
        affine = brats_affine(shape)
        rows = []
        for index in _progress(range(patients), progress):
            name = f"BraTS20_Training_{index + 1:0{width}d}"
            image_seq, meta_seq = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(2)
            volumes = synthesize_patient(np.random.default_rng(image_seq), grades[index], shape)
            folder = partial / name
            folder.mkdir()
            for key, array in volumes.items():
                _write_nifti(folder / f"{name}_{key}.nii", array, affine)
            rows.append(_mapping_row(np.random.default_rng(meta_seq), grades[index], index, width, name))
        with open(partial / MAPPING_FILE, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(MAPPING_COLUMNS)
            writer.writerows(rows)
        settings = {"patients": patients, "seed": seed, "shape": list(shape), "lgg_fraction": lgg_fraction}
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
    n_lgg = int(round(patients * lgg_fraction))
    if patients >= 2:
        n_lgg = min(max(n_lgg, 1), patients - 1)
    n_lgg = min(max(n_lgg, 0), patients)
    grades = np.array(["LGG"] * n_lgg + ["HGG"] * (patients - n_lgg))
    # The root sequence itself is the grade stream; patients use its children (spawn keys).
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    return [str(g) for g in rng.permutation(grades)]


# --------------------------------------------------------------------------------------------
# Anatomy and intensities


def _synthesize(
    rng: np.random.Generator, grade: str, shape: Sequence[int], with_tissue: bool
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Volumes, plus (if asked) the healthy-tissue map (0 bg, 1 CSF, 2 GM, 3 WM) before the
    tumour was painted in; the map lets tests check contrasts without re-deriving anatomy."""
    if grade not in GRADES:
        raise ConfigError(f"synthetic patient: grade must be one of {GRADES}, got {grade!r}")
    shape = _check_shape(shape)
    dims = np.array(shape, dtype=np.float64)

    # Brain ellipsoid, with a margin of at least one voxel to the volume's faces.
    frac = np.array([rng.uniform(0.30, 0.36), rng.uniform(0.33, 0.37), rng.uniform(0.42, 0.45)])
    centre = (dims - 1) / 2 + dims * rng.uniform(-1, 1, 3) * np.array([0.02, 0.02, 0.01])
    room = np.minimum(centre, dims - 1 - centre) - 1
    axes = np.minimum(dims * frac, room / 1.05)
    lo = np.maximum(np.floor(centre - 1.05 * axes), 0).astype(int)
    hi = np.minimum(np.ceil(centre + 1.05 * axes) + 1, dims).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    bshape = tuple(int(b - a) for a, b in zip(lo, hi))
    u = [((np.arange(a, b) - c) / s).astype(np.float32) for a, b, c, s in zip(lo, hi, centre, axes)]

    rho = (u[0][:, None] ** 2 + u[1][None, :] ** 2)[:, :, None] + (u[2] ** 2)[None, None, :]
    np.sqrt(rho, out=rho)
    # Outline and grey/white border are perturbed by smooth noise (bounded by 1 in magnitude),
    # so the brain always contains rho < 0.96 and tumours placed inside that stay in the brain.
    brain = rho < 1 + 0.04 * _smooth_noise(rng, bshape, (5, 5, 4))
    wm = rho < rng.uniform(0.78, 0.86) + 0.08 * _smooth_noise(rng, bshape, (14, 14, 11))
    del rho
    cls = brain.view(np.uint8) * np.uint8(_GM)
    cls += (brain & wm).view(np.uint8)  # GM (2) + 1 = WM (3)
    del wm

    _paint_ventricles(rng, cls, u, axes, brain)
    tissue = None
    if with_tissue:
        tissue = np.zeros(shape, dtype=np.uint8, order="F")
        tissue[box] = cls
    tbox = _paint_tumour(rng, grade, cls, u, axes, brain)

    seg = np.zeros(shape, dtype=np.uint8, order="F")
    seg[box][tbox] = _SEG_OF_CLASS[cls[tbox]]

    # Tumour tissue is heterogeneous; healthy texture is left to noise and bias.
    tumour = cls[tbox] >= _OEDEMA
    hetero = 1 + 0.12 * _smooth_noise(rng, cls[tbox].shape, (5, 5, 5))

    scanner = _SCANNERS[rng.integers(len(_SCANNERS))] * rng.uniform(0.9, 1.1, 4).astype(np.float32)
    enhancement = rng.uniform(1.6, 2.2) if grade == "HGG" else rng.uniform(1.05, 1.2)
    noise_frac = rng.uniform(0.015, 0.04)
    volumes: dict[str, np.ndarray] = {}
    for m, modality in enumerate(MODALITIES):
        base = _BASE[modality]
        lut = np.empty(7, dtype=np.float32)
        lut[:4] = base["healthy"]
        lut[_OEDEMA], lut[_CORE] = base["oedema"], base[grade]
        lut[_ENH] = base["enh"] if base["enh"] is not None else base["healthy"][_WM] * enhancement
        lut[1:] *= rng.uniform(0.92, 1.08, 6).astype(np.float32)
        sigma = np.float32(noise_frac * lut[_GM])
        gain = 1 + rng.uniform(0.05, 0.2) * _smooth_noise(rng, bshape, (3, 3, 3))
        gain *= scanner[m]

        img = lut[cls]
        part = img[tbox]
        part[tumour] *= hetero[tumour]
        img *= gain
        img += sigma * rng.standard_normal(bshape, dtype=np.float32)
        # Magnitude images are never negative; >= 1 keeps "non-zero" a valid brain mask.
        np.clip(img, 1, np.iinfo(np.int16).max, out=img)
        img *= brain
        vol = np.zeros(shape, dtype=np.int16, order="F")
        vol[box] = img
        volumes[modality] = vol
    volumes["seg"] = seg
    return volumes, tissue


def _paint_ventricles(
    rng: np.random.Generator, cls: np.ndarray, u: list[np.ndarray], axes: np.ndarray, brain
) -> None:
    """Two lateral-ventricle ellipsoids of CSF either side of the midline, at least a voxel
    thick so they survive tiny volumes."""
    size = rng.uniform(0.8, 1.3)
    semi = np.maximum(np.array([0.07, 0.30, 0.14]) * size, 1.2 / axes)  # in brain units
    for side in (-1, 1):
        c = np.array([side * rng.uniform(0.10, 0.16), rng.uniform(-0.05, 0.08), rng.uniform(0.05, 0.15)])
        region = _ellipsoid_box(u, c, semi * 1.05)
        if region is None:
            continue
        d = _ellipsoid_distance(u, region, c, semi)
        inside = d < 1 + 0.05 * _smooth_noise(rng, d.shape, (3, 3, 3))
        inside &= brain[region]
        cls[region][inside] = _CSF


def _paint_tumour(
    rng: np.random.Generator,
    grade: str,
    cls: np.ndarray,
    u: list[np.ndarray],
    axes: np.ndarray,
    brain: np.ndarray,
) -> tuple[slice, slice, slice]:
    """Paint oedema, core (necrosis for HGG) and enhancement classes into ``cls``; return the
    tumour's bounding box (within ``cls``)."""
    # Radii in voxels per axis: the whole tumour is 8-20 % of the brain's extent, with floors so
    # every label keeps a few voxels in tiny test volumes.
    r_whole = 2 * rng.uniform(0.08, 0.20)
    whole = np.maximum(r_whole * axes, 4.0)
    core = np.maximum(whole * rng.uniform(0.45, 0.75 if grade == "HGG" else 0.85), 3.0)
    core = np.minimum(core, whole - 1)
    necrosis = np.clip(core * rng.uniform(0.35, 0.65), 1.4, core - 1.6)
    amp_whole, amp_core, amp_nec = 0.25, 0.12, 0.15

    # Place the centre so the perturbed whole tumour stays within rho < 0.96 (inside the brain).
    extent = max(np.max(whole / axes) * (1 + amp_whole), np.max(core / axes) * (1 + amp_core))
    limit = 0.95 - extent
    if limit <= 0:  # tumour as large as the brain (only near MIN_SHAPE): shrink it to fit
        shrink = 0.9 / extent
        whole, core, necrosis = whole * shrink, core * shrink, necrosis * shrink
        limit = 0.95 - extent * shrink
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    c = direction * limit * rng.uniform(0, 1) ** (1 / 3)

    semi_whole = whole / axes
    region = _ellipsoid_box(u, c, semi_whole * (1 + amp_whole))
    assert region is not None  # the centre is inside the brain box by construction
    sub = cls[region]
    inside = brain[region]
    d_whole = _ellipsoid_distance(u, region, c, semi_whole)
    d_core = _ellipsoid_distance(u, region, c, core / axes)
    n_whole = _smooth_noise(rng, sub.shape, (5, 5, 5))
    n_core = _smooth_noise(rng, sub.shape, (4, 4, 4))
    is_whole = (d_whole < 1 + amp_whole * n_whole) & inside
    is_core = (d_core < 1 + amp_core * n_core) & inside
    if grade == "HGG":
        d_nec = _ellipsoid_distance(u, region, c, necrosis / axes)
        is_nec = (d_nec < 1 + amp_nec * _smooth_noise(rng, sub.shape, (6, 6, 6))) & is_core
        sub[is_whole] = _OEDEMA
        sub[is_core] = _ENH
        sub[is_nec] = _CORE
    else:
        sub[is_whole] = _OEDEMA
        sub[is_core] = _CORE
        if rng.uniform() < 0.3:  # a speck of faint enhancement, as some LGGs show
            spots = np.argwhere(is_core)
            if len(spots):
                x, y, z = spots[rng.integers(len(spots))]
                i, j, k = np.indices(is_core.shape, sparse=True)
                speck = np.abs(i - x) + np.abs(j - y) + np.abs(k - z) <= 1  # <= 7 voxels
                sub[speck & is_core] = _ENH
    return region


def _ellipsoid_box(
    u: list[np.ndarray], centre: np.ndarray, semi: np.ndarray
) -> tuple[slice, slice, slice] | None:
    """Index box (into the brain box) of the ellipsoid ``centre`` ± ``semi`` in brain units."""
    region = []
    for coords, c, s in zip(u, centre, semi):
        idx = np.nonzero(np.abs(coords - c) <= s)[0]
        if len(idx) == 0:
            return None
        region.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(region)  # type: ignore[return-value]


def _ellipsoid_distance(
    u: list[np.ndarray], region: tuple[slice, slice, slice], centre: np.ndarray, semi: np.ndarray
) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface) over ``region``."""
    a, b, c = (
        ((coords[r] - ci) / si).astype(np.float32) for coords, r, ci, si in zip(u, region, centre, semi)
    )
    d = (a[:, None] ** 2 + b[None, :] ** 2)[:, :, None] + (c**2)[None, None, :]
    return np.sqrt(d, out=d)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], cells: Sequence[int]) -> np.ndarray:
    """Smooth random field in [-1, 1]: a coarse uniform grid of ``cells`` nodes spread over
    ``shape``, interpolated axis by axis with smoothstep weights.

    Each output mixes only its two neighbouring nodes per axis, done with element-wise ops
    rather than a matmul: cheaper, and free of BLAS kernels whose rounding could make the bytes
    depend on the machine.
    """
    field = rng.uniform(-1, 1, size=tuple(cells)).astype(np.float32)
    for axis, n in enumerate(shape):
        nodes = field.shape[axis]
        t = np.linspace(0, nodes - 1, n) if n > 1 else np.zeros(1)
        i0 = np.minimum(np.floor(t).astype(np.intp), nodes - 2)
        f = t - i0
        f = (f * f * (3 - 2 * f)).astype(np.float32)
        f = f.reshape([-1 if a == axis else 1 for a in range(3)])
        lo = np.take(field, i0, axis=axis)
        field = np.take(field, i0 + 1, axis=axis)
        field -= lo
        field *= f
        field += lo
    return field


# --------------------------------------------------------------------------------------------
# Files


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_data_dtype(array.dtype)
    header = img.header
    header.set_xyzt_units("mm", "sec")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_slope_inter(1.0, 0.0)  # explicit "no scaling"; nibabel keeps it on write
    img.to_filename(path)


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


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ConfigError(f"synthetic cohort: shape must be three integers, got {shape!r}") from None
    if len(dims) != 3 or any(d < m for d, m in zip(dims, MIN_SHAPE)):
        raise ConfigError(
            f"synthetic cohort: shape must be three integers >= {MIN_SHAPE}, got {tuple(shape)!r}"
        )
    return dims  # type: ignore[return-value]


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

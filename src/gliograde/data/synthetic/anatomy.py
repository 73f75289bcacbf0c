"""One synthetic patient's anatomy: a head with brain and ventricles, scanner-dependent intensities,
a tumour whose phenotype follows its grade, and tumour mimics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from gliograde.data.synthetic.settings import GRADES, _check_difficulty, _check_shape
from gliograde.errors import ConfigError


MODALITY_FILES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
"""The BraTS 2020 modality file suffixes, in the order their voxels are drawn."""


# Internal voxel classes; intensity and mask label are looked up from these.
_BG, _CSF, _GM, _WM, _OEDEMA, _CORE, _ENH = range(7)


# Mimics: lesions outside the tumour that look like its oedema, necrosis and rim (unlabelled).
_MIMIC_OEDEMA, _MIMIC_CORE, _MIMIC_ENH = range(7, 10)


_SEG_OF_CLASS = np.array([0, 0, 0, 0, 2, 1, 4, 0, 0, 0], dtype=np.uint8)
MIMIC_TISSUE = 4
"""Value of mimic-lesion voxels in the tissue map ``_synthesize`` returns for tests."""


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


@dataclass(frozen=True)
class _Phenotype:
    """The grade cues of one patient's tumour and the scanner variation of its images."""

    ring: bool  # a necrotic centre inside an enhancing rim (HGG-like), else a solid core
    core_max: float  # upper bound of the core's radius as a fraction of the whole tumour's
    necrosis_scale: float  # multiplies the necrosis radius (ring only)
    focus: float | None  # solid cores: enhancing focus radius / core radius; None: a rare speck
    enhancement: float | None  # enhancing T1ce over white matter; None: drawn by grade
    gain_jitter: float  # per-modality gain is the scanner's times 1 ± this
    bias: float  # upper bound of the bias field's amplitude
    noise: float  # upper bound of the noise sigma as a fraction of grey matter
    mimics: float = 0.0  # chance of each of two grade-independent mimic lesions


_RING_AT = 0.35
"""Malignancy above which the core is a necrotic centre inside an enhancing rim."""
MIMIC_RATE_AT_0 = 0.25
MIMIC_RATE_SLOPE = 1.25
"""Each of a patient's two mimic slots holds a lesion with chance ``0.25 + 1.25 * difficulty``
(capped at 1) when ``difficulty > 0``; see :func:`_paint_mimics`."""


def _phenotype(rng: np.random.Generator, grade: str, difficulty: float) -> _Phenotype:
    """Grade cues at ``difficulty``; at 0 they follow the grade alone and draw nothing here, so
    the cohort stays bit-identical to the one made before difficulty existed."""
    if difficulty == 0:
        hgg = grade == "HGG"
        return _Phenotype(hgg, 0.75 if hgg else 0.85, 1.0, None, None, 0.1, 0.2, 0.04)
    # Latent malignancy: unit normals whose means differ by delta separate the grades with
    # AUROC Phi(delta / sqrt 2) = 1 - difficulty / 2; squashed into (0, 1) by Phi.
    delta = np.sqrt(2) * NormalDist().inv_cdf(1 - difficulty / 2)
    z = rng.standard_normal() + (delta / 2 if grade == "HGG" else -delta / 2)
    m = NormalDist().cdf(z)
    ring = m > _RING_AT
    return _Phenotype(
        ring=ring,
        core_max=0.85 - 0.10 * m,
        # Rims that barely qualify hold little necrosis.
        necrosis_scale=float(np.clip(1.5 * (m - _RING_AT) / (1 - _RING_AT), 0.3, 1.0)),
        focus=None if ring else 0.6 * m / _RING_AT,
        enhancement=1.05 + 1.15 * m + rng.uniform(-0.05, 0.05),
        gain_jitter=0.1 + 0.25 * difficulty,
        bias=0.2 + 0.3 * difficulty,
        noise=0.04 + 0.08 * difficulty,
        mimics=min(1.0, MIMIC_RATE_AT_0 + MIMIC_RATE_SLOPE * difficulty),
    )


def _synthesize(
    rng: np.random.Generator, grade: str, shape: Sequence[int], with_tissue: bool, difficulty: float = 0.0
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Volumes, plus (if asked) the healthy-tissue map (0 bg, 1 CSF, 2 GM, 3 WM) before the
    tumour was painted in, with mimic lesions as :data:`MIMIC_TISSUE`; the map lets tests check
    contrasts and mimics without re-deriving anatomy."""
    if grade not in GRADES:
        raise ConfigError(f"synthetic patient: grade must be one of {GRADES}, got {grade!r}")
    shape = _check_shape(shape)
    difficulty = _check_difficulty(difficulty)
    pheno = _phenotype(rng, grade, difficulty)
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
    tbox, tumour_centre = _paint_tumour(rng, pheno, cls, u, axes, brain)
    mimic_enhancement = None
    if pheno.mimics > 0:
        mimic_enhancement = _paint_mimics(rng, pheno.mimics, cls, u, axes, brain, tumour_centre)
        if tissue is not None:
            tissue[box][cls >= _MIMIC_OEDEMA] = MIMIC_TISSUE

    seg = np.zeros(shape, dtype=np.uint8, order="F")
    seg[box][tbox] = _SEG_OF_CLASS[cls[tbox]]

    # Tumour tissue is heterogeneous; healthy texture is left to noise and bias.
    tumour = (cls[tbox] >= _OEDEMA) & (cls[tbox] <= _ENH)
    hetero = 1 + 0.12 * _smooth_noise(rng, cls[tbox].shape, (5, 5, 5))

    scanner = _SCANNERS[rng.integers(len(_SCANNERS))]
    scanner = scanner * rng.uniform(1 - pheno.gain_jitter, 1 + pheno.gain_jitter, 4).astype(np.float32)
    if pheno.enhancement is None:
        enhancement = rng.uniform(1.6, 2.2) if grade == "HGG" else rng.uniform(1.05, 1.2)
    else:
        enhancement = pheno.enhancement
    noise_frac = rng.uniform(0.015, pheno.noise)
    core_kind = "HGG" if pheno.ring else "LGG"  # necrosis, or solid non-enhancing tumour
    volumes: dict[str, np.ndarray] = {}
    for m, modality in enumerate(MODALITY_FILES):
        base = _BASE[modality]
        lut = np.empty(len(_SEG_OF_CLASS), dtype=np.float32)
        lut[:4] = base["healthy"]
        lut[_OEDEMA], lut[_CORE] = base["oedema"], base[core_kind]
        lut[_ENH] = base["enh"] if base["enh"] is not None else base["healthy"][_WM] * enhancement
        jitter = rng.uniform(0.92, 1.08, 6).astype(np.float32)
        lut[1:7] *= jitter
        if mimic_enhancement is not None:
            lut[_MIMIC_OEDEMA] = lut[_OEDEMA]
            lut[_MIMIC_CORE] = base["HGG"] * jitter[_CORE - 1]
            enh = base["enh"] if base["enh"] is not None else base["healthy"][_WM] * mimic_enhancement
            lut[_MIMIC_ENH] = enh * jitter[_ENH - 1]
        sigma = np.float32(noise_frac * lut[_GM])
        gain = 1 + rng.uniform(0.05, pheno.bias) * _smooth_noise(rng, bshape, (3, 3, 3))
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
    pheno: _Phenotype,
    cls: np.ndarray,
    u: list[np.ndarray],
    axes: np.ndarray,
    brain: np.ndarray,
) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Paint oedema, core (necrosis inside a rim, or solid) and enhancement classes into ``cls``;
    return the tumour's bounding box (within ``cls``) and its centre in brain units."""
    # Radii in voxels per axis: the whole tumour is 8-20 % of the brain's extent, with floors so
    # every label keeps a few voxels in tiny test volumes.
    r_whole = 2 * rng.uniform(0.08, 0.20)
    whole = np.maximum(r_whole * axes, 4.0)
    core = np.maximum(whole * rng.uniform(0.45, pheno.core_max), 3.0)
    core = np.minimum(core, whole - 1)
    necrosis = np.clip(core * (rng.uniform(0.35, 0.65) * pheno.necrosis_scale), 1.4, core - 1.6)
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
    if pheno.ring:
        d_nec = _ellipsoid_distance(u, region, c, necrosis / axes)
        is_nec = (d_nec < 1 + amp_nec * _smooth_noise(rng, sub.shape, (6, 6, 6))) & is_core
        sub[is_whole] = _OEDEMA
        sub[is_core] = _ENH
        sub[is_nec] = _CORE
    else:
        sub[is_whole] = _OEDEMA
        sub[is_core] = _CORE
        if pheno.focus is None:
            if rng.uniform() < 0.3:  # a speck of faint enhancement, as some LGGs show
                spots = np.argwhere(is_core)
                if len(spots):
                    x, y, z = spots[rng.integers(len(spots))]
                    i, j, k = np.indices(is_core.shape, sparse=True)
                    speck = np.abs(i - x) + np.abs(j - y) + np.abs(k - z) <= 1  # <= 7 voxels
                    sub[speck & is_core] = _ENH
        else:  # an enhancing focus, larger the more malignant the tumour
            spots = np.argwhere(is_core)
            radius = pheno.focus * float(core.min())
            if len(spots) and radius >= 1:
                x, y, z = spots[rng.integers(len(spots))]
                i, j, k = np.indices(is_core.shape, sparse=True)
                focus = (i - x) ** 2 + (j - y) ** 2 + (k - z) ** 2 <= radius**2
                sub[focus & is_core] = _ENH
    return region, c


def _paint_mimics(
    rng: np.random.Generator,
    rate: float,
    cls: np.ndarray,
    u: list[np.ndarray],
    axes: np.ndarray,
    brain: np.ndarray,
    tumour_centre: np.ndarray,
) -> float:
    """Paint up to two grade-independent mimic lesions into healthy tissue of ``cls``; return
    their T1ce enhancement over white matter.

    Each (present with chance ``rate``) is an enhancing nodule, or a rim around a dark centre,
    inside a FLAIR-bright halo: what the tumour's grade cues look like, but never in the mask
    and drawn the same for both grades. They sit in the hemisphere across from the tumour and on
    its axial slices, so a whole slice shows them and a tumour-centred crop mostly does not.
    """
    enhancement = rng.uniform(1.5, 2.2)
    # Across the brain from the tumour along the in-plane axis it is most off-centre on, as far
    # out as the brain allows: there a square crop centred on the tumour leaves it out.
    along = 0 if abs(tumour_centre[0]) >= abs(tumour_centre[1]) else 1
    across = 1 - along
    side = -1.0 if tumour_centre[along] >= 0 else 1.0
    for slot in (-1, 1):
        if rng.uniform() >= rate:
            continue
        # Radius of the enhancing part: 4-9 voxels at full size; in brain units per axis below.
        radius = rng.uniform(0.05, 0.11) * float(axes[:2].mean())
        core = np.maximum(radius, 1.5) / axes
        halo = core * rng.uniform(1.6, 2.2)
        centre = np.empty(3)
        centre[across] = tumour_centre[across] + slot * rng.uniform(0.1, 0.25)
        centre[2] = tumour_centre[2] + rng.uniform(-0.05, 0.05)
        room = np.sqrt(max(0.93**2 - centre[across] ** 2 - centre[2] ** 2, 0.0)) - float(core[along])
        if room <= 0:
            continue
        centre[along] = side * room
        region = _ellipsoid_box(u, centre, halo * 1.1)
        if region is None:
            continue
        sub = cls[region]
        healthy = (sub < _OEDEMA) & (sub > _BG) & brain[region]
        d = _ellipsoid_distance(u, region, centre, core)
        wobble = 0.1 * _smooth_noise(rng, sub.shape, (3, 3, 3))
        sub[healthy & (_ellipsoid_distance(u, region, centre, halo) < 1 + wobble)] = _MIMIC_OEDEMA
        sub[healthy & (d < 1 + wobble)] = _MIMIC_ENH
        if rng.uniform() < 0.5:  # a rim around a necrotic-looking centre
            sub[healthy & (d < rng.uniform(0.4, 0.6) + wobble)] = _MIMIC_CORE
    return enhancement


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

"""Typed views of the ``data.*`` config. Hydra hands us nested mappings; these dataclasses give
them names, defaults and validation, and reject unknown keys so a typo is an error, not a no-op."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gliograde.data.synthetic.settings import (

    DEFAULT_DIFFICULTY,

    DEFAULT_LGG_FRACTION,

    DEFAULT_PATIENTS,

    DEFAULT_SEED,

    DEFAULT_SHAPE,

)
from gliograde.errors import ConfigError

MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
"""Canonical modality names, and the channel order of the cache."""

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class LayoutSpec:
    """How a cohort's patient folders and files are named.

    Templates are file stems with ``{id}`` standing for the patient folder's name; ``.nii`` and
    ``.nii.gz`` are both accepted.
    """

    name: str = "brats2020"
    patient_pattern: str = r"BraTS20_(Training|Validation)_\d{3}"
    modality_files: Mapping[str, str] = field(default_factory=lambda: {m: "{id}_" + m for m in MODALITIES})
    mask_file: str = "{id}_seg"
    mask_labels: tuple[int, ...] = (0, 1, 2, 4)


@dataclass(frozen=True)
class LabelSpec:
    """Where the class labels come from: a CSV table keyed by patient id.

    ``file`` is absolute, or relative to the folder holding the patient folders (then to
    ``data.root``); ``None`` means the cohort has no labels.
    """

    file: str | None = "name_mapping.csv"
    id_column: str = "BraTS_2020_subject_ID"
    label_column: str = "Grade"
    classes: tuple[str, ...] = ("LGG", "HGG")
    missing_values: tuple[str, ...] = ("NA", "")

    def __post_init__(self) -> None:
        # CSV cells are text: classes typed as numbers on the command line (e.g. [0,1]) must match.
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "missing_values", tuple(str(v) for v in self.missing_values))
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"data.labels.classes={list(self.classes)} needs at least two distinct names")


@dataclass(frozen=True)
class PreprocessSpec:
    """Preprocessing settings; all but ``workers`` change the cached voxels (and the cache key)."""

    clip_percentiles: tuple[float, float] | None = None
    reorient: str | None = None  # e.g. "RAS" or "LPS"; None keeps the files' voxel order
    workers: int | None = None  # None: every available core

    def __post_init__(self) -> None:
        clip = self.clip_percentiles
        if clip is not None:
            if not isinstance(clip, (tuple, list)) or len(clip) != 2 or not 0 <= clip[0] < clip[1] <= 100:
                raise ConfigError(
                    f"data.preprocess.clip_percentiles={clip!r} must be two percentiles [low, high] "
                    "with 0 <= low < high <= 100, or null"
                )
            object.__setattr__(self, "clip_percentiles", (float(clip[0]), float(clip[1])))
        if self.reorient is not None:
            codes = str(self.reorient).upper()
            pairs = ("LR", "AP", "SI")
            axes = sorted(next((i for i, pair in enumerate(pairs) if c in pair), -1) for c in codes)
            if axes != [0, 1, 2]:
                raise ConfigError(
                    f"data.preprocess.reorient={self.reorient!r} must be three axis codes, one of L/R, "
                    "A/P and S/I each (e.g. RAS, LPS), or null"
                )
            object.__setattr__(self, "reorient", codes)
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"data.preprocess.workers={self.workers} must be at least 1, or null")


@dataclass(frozen=True)
class SliceSpec:
    """Which 2D slices of each patient become samples (applied when reading the cache)."""

    strategy: str = "tumor_topk"  # tumor_topk | tumor_all | brain | middle | range
    plane: str = "axial"
    k: int = 10
    min_area: int = 1
    min_brain_fraction: float = 0.5
    n: int = 10
    z_min: int = 0
    z_max: int = -1  # inclusive; negative counts from the end

    def __post_init__(self) -> None:
        for name in ("k", "n", "min_area"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.slices.{name}={getattr(self, name)} must be at least 1")
        if not 0 < self.min_brain_fraction <= 1:
            raise ConfigError(f"data.slices.min_brain_fraction={self.min_brain_fraction} must be in (0, 1]")


@dataclass(frozen=True)
class CropSpec:
    """The square of each slice a model sees (see ``gliograde.data.batches.crops``)."""

    mode: str = "none"  # none | tumor | brain
    size: int = 128

    def __post_init__(self) -> None:
        if self.mode not in ("none", "tumor", "brain"):
            raise ConfigError(f"data.crop.mode={self.mode!r} must be one of ['none', 'tumor', 'brain']")
        if self.size < 1:
            raise ConfigError(f"data.crop.size={self.size} must be at least 1")


@dataclass(frozen=True)
class SplitSpec:
    """Patient-level stratified split fractions (of the whole cohort) and their seed."""

    train: float = 0.7
    val: float = 0.15
    test: float = 0.15
    seed: int = 42

    def __post_init__(self) -> None:
        fractions = (self.train, self.val, self.test)
        if not all(0 <= f <= 1 for f in fractions) or self.train <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise ConfigError(
                f"data.split fractions train={self.train} val={self.val} test={self.test} "
                "must each be in [0, 1], with train > 0, and sum to 1"
            )


@dataclass(frozen=True)
class AugmentSpec:
    """Train-only augmentation, applied per batch after transfer to the device."""

    enabled: bool = False
    prob: float = 0.5
    flip: bool = True
    rotate_degrees: float = 10.0
    scale: float = 0.1
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.05
    bias_field: float = 0.2
    # Gaussian smoothing, sigma in pixels drawn per axis from [low, high]: a model trained with it
    # grades resampled scans (thick slices, a registration's interpolation) like the originals.
    blur_sigma: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not 0 <= self.prob <= 1:
            raise ConfigError(f"data.augment.prob={self.prob} must be in [0, 1]")
        amounts = ("rotate_degrees", "scale", "intensity_scale", "intensity_shift", "noise_std", "bias_field")
        for name in amounts:
            if getattr(self, name) < 0:
                raise ConfigError(f"data.augment.{name}={getattr(self, name)} must be at least 0")
        low, high = self.gamma
        if not 0 < low <= high:
            raise ConfigError(
                f"data.augment.gamma={list(self.gamma)} must be [low, high] with 0 < low <= high"
            )
        low, high = self.blur_sigma
        if not 0 <= low <= high:
            raise ConfigError(
                f"data.augment.blur_sigma={list(self.blur_sigma)} must be [low, high] with 0 <= low <= high (pixels)"
            )


@dataclass(frozen=True)
class SyntheticSpec:
    """The built-in synthetic cohort, generated under ``data.root`` on first use."""

    patients: int = DEFAULT_PATIENTS
    seed: int = DEFAULT_SEED
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    lgg_fraction: float = DEFAULT_LGG_FRACTION
    difficulty: float = DEFAULT_DIFFICULTY

    def __post_init__(self) -> None:
        if self.patients < 1 or min(self.shape) < 1:
            raise ConfigError(
                f"data.synthetic: patients={self.patients} and shape={list(self.shape)} must be at least 1"
            )
        if not 0 <= self.lgg_fraction <= 1:
            raise ConfigError(f"data.synthetic.lgg_fraction={self.lgg_fraction} must be in [0, 1]")
        if self.seed < 0:
            raise ConfigError(f"data.synthetic.seed={self.seed} must be at least 0")


T = TypeVar("T")


def from_mapping(cls: type[T], mapping: Mapping[str, Any] | T | None, where: str) -> T:
    """Build dataclass ``cls`` from a (possibly nested Omega) mapping, rejecting unknown keys.

    ``where`` names the config node in error messages, e.g. ``data.slices``.
    """
    if mapping is None:
        return cls()
    if isinstance(mapping, cls):
        return mapping
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    values = {}
    for key, value in mapping.items():
        values[key] = _plain(value)
    return cls(**values)


def _plain(value: Any) -> Any:
    """Omega containers to tuples/dicts so dataclasses stay hashable and comparable."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return tuple(_plain(v) for v in value)
    return value

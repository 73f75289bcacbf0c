"""A synthetic cohort's settings: their defaults (the data=synthetic preset's), their checks, the
record a generated cohort keeps of them, and the train.py overrides that match a recorded cohort."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from gliograde.errors import ConfigError


# The one source of the synthetic cohort's defaults: the CLI and the data preset use these.
DEFAULT_PATIENTS: int = 60
DEFAULT_SEED: int = 0
DEFAULT_SHAPE: tuple[int, int, int] = (240, 240, 155)
DEFAULT_LGG_FRACTION: float = 76 / 369  # the BraTS 2020 training ratio
DEFAULT_DIFFICULTY: float = 0.1
"""Grade-cue overlap of the preset. At 0.1 a 5-epoch ResNet18 trained on the preset's 60
patients (``experiment=quickstart``, 5 epochs), scored on a fresh 100-patient cohort
of the same difficulty, lands between chance and perfect (patient AUROC about 0.8 on whole
slices) and a tumour crop does better (README: "How hard is the synthetic cohort?"). 0 keeps
the cleanly separable cohort for anything that needs a sure signal."""


SETTINGS: tuple[str, ...] = ("patients", "seed", "shape", "lgg_fraction", "difficulty")
"""The generation settings recorded with a cohort; equal settings give equal voxels."""
GENERATOR_VERSION: int = 2
"""Recorded with each cohort. Version 2 added the mimic lesions, so cohorts with difficulty > 0
drawn by version 1 hold other voxels for the same settings; at difficulty 0 both agree."""


MIN_SHAPE: tuple[int, int, int] = (24, 24, 12)
"""Smallest accepted volume; HGG masks there still hold a few voxels each of labels 1, 2 and 4."""
SETTINGS_FILE = ".synthetic.json"  # hidden: discovery ignores dot files
GRADES: tuple[str, ...] = ("LGG", "HGG")


def generation_settings(root: str | Path) -> dict | None:
    """The settings a synthetic cohort under ``root`` was generated with (None if not ours).

    Cohorts recorded before ``difficulty`` existed were generated at difficulty 0, and before
    ``generator`` was recorded by generator version 1.
    """
    path = Path(root) / SETTINGS_FILE
    if not path.is_file():
        return None
    settings = json.loads(path.read_text())
    settings.setdefault("difficulty", 0.0)
    settings.setdefault("generator", 1)
    return settings


def settings_mismatch(recorded: Mapping, wanted: Mapping) -> str | None:
    """Why a cohort generated with ``recorded`` settings is not the one ``wanted`` describes, as
    one line naming the ``data.synthetic.*`` overrides that would select it; None if it is.

    Both mappings hold :data:`SETTINGS` (``difficulty`` defaults to 0). LGG fractions that give the
    same number of LGG patients give the same cohort, so ``0.206`` matches ``76/369`` for 60.
    ``recorded`` may hold the ``generator`` version (1 if absent); a cohort with difficulty > 0
    from another version than :data:`GENERATOR_VERSION` is refused, as its voxels differ.
    """
    version = int(recorded.get("generator", 1))
    if version != GENERATOR_VERSION and float(recorded.get("difficulty", 0.0)) > 0:
        return (
            f"holds a synthetic cohort drawn by generator version {version}, whose voxels at "
            f"difficulty > 0 differ from this version's ({GENERATOR_VERSION}): delete that folder to "
            "generate it again, or set data.root elsewhere"
        )
    recorded, wanted = _complete(recorded), _complete(wanted)
    differ = _differing(wanted, recorded)
    if not differ:
        return None
    made = " ".join(f"{key}={_override_value(recorded[key])}" for key in differ)
    configured = " ".join(f"{key}={_override_value(wanted[key])}" for key in differ)
    fix = " ".join(f"data.synthetic.{key}={_override_value(recorded[key])}" for key in differ)
    return (
        f"holds a synthetic cohort generated with {made}, not the configured {configured}: to train "
        f"on it add {fix}; to generate the configured one, delete that folder or set data.root elsewhere"
    )


def train_overrides(settings: Mapping) -> list[str]:
    """The ``data.synthetic.*`` overrides (beyond ``data.root``) that make the default
    ``data=synthetic`` preset describe a cohort generated with ``settings``."""
    defaults = {
        "patients": DEFAULT_PATIENTS,
        "seed": DEFAULT_SEED,
        "shape": DEFAULT_SHAPE,
        "lgg_fraction": DEFAULT_LGG_FRACTION,
        "difficulty": DEFAULT_DIFFICULTY,
    }
    settings = _complete(settings)
    return [f"data.synthetic.{key}={_override_value(settings[key])}" for key in _differing(defaults, settings)]


def _differing(configured: Mapping, target: Mapping) -> list[str]:
    """The settings to change, in :data:`SETTINGS` order, so ``configured`` gives ``target``'s
    cohort; ``patients`` comes before ``lgg_fraction``, whose LGG count depends on it."""
    configured = {key: configured[key] for key in SETTINGS}
    differ = []
    for key in SETTINGS:
        if _canonical(configured)[key] != _canonical(target)[key]:
            configured[key] = target[key]
            differ.append(key)
    return differ


def _complete(settings: Mapping) -> dict:
    """``settings`` with the difficulty of records made before it existed (0) filled in."""
    return {"difficulty": 0.0, **settings}


def _canonical(settings: Mapping) -> dict:
    """Settings reduced to what decides the voxels: the LGG count rather than the fraction."""
    patients = int(settings["patients"])
    return {
        "patients": patients,
        "seed": int(settings["seed"]),
        "shape": tuple(int(s) for s in settings["shape"]),
        "lgg_fraction": _lgg_count(patients, float(settings["lgg_fraction"])),
        "difficulty": float(settings["difficulty"]),
    }


def _override_value(value) -> str:
    """``value`` as typed in a Hydra override (floats by ``repr``, which round-trips exactly)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(int(v)) for v in value) + "]"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _check_difficulty(difficulty: float) -> float:
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float, np.number)):
        raise ConfigError(f"synthetic cohort: difficulty must be a number in [0, 1], got {difficulty!r}")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise ConfigError(f"synthetic cohort: difficulty must be in [0, 1], got {difficulty!r}")
    return float(difficulty)


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


def _lgg_count(patients: int, lgg_fraction: float) -> int:
    n_lgg = int(round(patients * lgg_fraction))
    if patients >= 2:
        n_lgg = min(max(n_lgg, 1), patients - 1)
    return min(max(n_lgg, 0), patients)

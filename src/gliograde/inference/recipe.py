"""A model's inference recipe: its checkpoint and how it is meant to be applied (TTA, patient
aggregate, temperature, decision threshold), recorded as one thing, ``RUN/recipe.json``.

evaluate.py writes it whenever an evaluation applies the model in a way of its own (a TTA, a
temperature, a threshold other than 0.5) with the patient aggregate predict.py applies: the whole
recipe of that evaluation, sealed with a checksum of its content, each value with where it came
from. predict.py and the
export follow it by default; an explicit option that contradicts it is refused in one line
(``recipe=none`` ignores it). An export carries the recipe it was made with in its model card,
so an export older than the run's recipe is named stale wherever the run can be reached.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gliograde.errors import ConfigError
from gliograde.inference.calibration import CALIBRATION_FILE
from gliograde.inference.tta import TTA_MODES
from gliograde.files.sealed import read_sealed

RECIPE_FILE = "recipe.json"
RECIPE_MODES = ("auto", "none")
CALIBRATION_MODES = ("auto", "none")
PREDICT_AGGREGATE = "mean"  # predict.py averages a patient's slice probabilities
DEFAULTS = {"tta": "none", "aggregate": "mean", "temperature": None, "threshold": 0.5}
EXPORT_DIR = "export"
# evaluate.py's options that shape a recipe, at their defaults
EVALUATE_DEFAULTS = {"tta": "none", "calibration": "none", "threshold": 0.5}


class RecipeError(ConfigError):
    """A recipe that cannot be read or followed, or an option that contradicts it."""


def _rewrite(run: Path) -> str:
    return (
        f"re-run evaluate.py run_dir={run} with the options the model is meant to be used with "
        "(tta=..., calibration=temperature, threshold=...) to record it again"
    )


# ------------------------------------------------------------------------------ reading
def read_recipe(run: Path) -> dict[str, Any] | None:
    """``RUN/recipe.json``, checked against its checksum and for its fields; None when the run
    has no recipe (nor a stored temperature that would need one)."""
    run = Path(run)
    path = run / RECIPE_FILE
    if not path.is_file():
        if (run / CALIBRATION_FILE).is_file():
            raise RecipeError(
                f"{run / CALIBRATION_FILE}: a stored temperature without {RECIPE_FILE} (calibrated by an "
                f"older gliograde, or the recipe was removed): re-run evaluate.py run_dir={run} "
                f"calibration=temperature to record the recipe, or delete {CALIBRATION_FILE}"
            )
        return None
    recipe = read_sealed(path, _rewrite(run))
    problem = _field_problem(recipe)
    if problem:
        raise RecipeError(f"{path}: {problem}; {_rewrite(run)}")
    return recipe


def _field_problem(recipe: dict[str, Any]) -> str | None:
    for key in ("checkpoint", "checkpoint_sha256", "aggregate"):
        if not isinstance(recipe.get(key), str):
            return f"{key} is missing or not a string"
    if recipe.get("tta") not in TTA_MODES:
        return f"tta={recipe.get('tta')!r} is not one of {list(TTA_MODES)}"
    temperature = recipe.get("temperature")
    if temperature is not None and not (_is_number(temperature) and temperature > 0):
        return f"temperature={temperature!r} is neither null nor a positive number"
    threshold = recipe.get("threshold")
    if not (_is_number(threshold) and 0 < threshold < 1):
        return f"threshold={threshold!r} is not a probability in (0, 1)"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def recipe_checkpoint(run: Path, recipe: dict[str, Any]) -> Path:
    """The checkpoint file ``recipe`` names (relative to the run, unless absolute)."""
    path = Path(recipe["checkpoint"])
    path = path if path.is_absolute() else Path(run) / path
    if not path.is_file():
        raise RecipeError(
            f"{Path(run) / RECIPE_FILE}: its checkpoint {path} is missing: {_rewrite(Path(run))}, "
            "or pass recipe=none"
        )
    return path


def recipe_values(recipe: dict[str, Any] | None, checkpoint_sha256: str) -> dict[str, Any]:
    """What decides the patients' probabilities and calls: the recipe's checkpoint, TTA,
    aggregate, temperature and threshold (the defaults, for ``checkpoint_sha256``, without one).
    Two recipes with equal values grade every patient alike, whenever they were written."""
    if recipe is None:
        return {"checkpoint_sha256": checkpoint_sha256, **DEFAULTS}
    return {key: recipe[key] for key in ("checkpoint_sha256", *DEFAULTS)}


def describe(values: dict[str, Any]) -> str:
    """``tta=flip, aggregate=mean, temperature 0.5213, threshold 0.431``."""
    temperature = values["temperature"]
    shown = "none" if temperature is None else f"{temperature:.4f}"
    return (
        f"tta={values['tta']}, aggregate={values['aggregate']}, temperature {shown}, "
        f"threshold {values['threshold']:.6g}"
    )


# ------------------------------------------------------------------------------ writing
def chooses_recipe(options: dict[str, Any]) -> bool:
    """Whether an evaluation with ``options`` (evaluate.py's ``tta``, ``aggregate``,
    ``calibration``, ``threshold``) records the run's recipe: it applies the model in a way of its
    own (TTA, a temperature, a threshold other than 0.5) with the aggregate predict.py applies.
    A plain evaluation (another cohort, another split) leaves the recipe as it is."""
    if options["aggregate"] != PREDICT_AGGREGATE:
        return False
    return any(options[key] != default for key, default in EVALUATE_DEFAULTS.items())



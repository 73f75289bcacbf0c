"""Which recipe predict.py applies: the run's recorded recipe, the user's explicit options, and the
one-line refusal or note when they disagree or an export is stale."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gliograde.errors import ConfigError
from gliograde.inference.calibration import file_sha256
from gliograde.inference.export_staleness import export_staleness, run_of_export, stale_reason
from gliograde.inference.recipe import (
    CALIBRATION_MODES, DEFAULTS, EVALUATE_DEFAULTS, EXPORT_DIR, PREDICT_AGGREGATE, RECIPE_FILE, RECIPE_MODES,
    RecipeError, _rewrite, describe, read_recipe, recipe_checkpoint,
)
from gliograde.inference.tta import TTA_MODES


# ------------------------------------------------------------------------------ predict
@dataclass(frozen=True)
class Applied:
    """How predict.py grades: the recipe it follows (or None) and the values it applies."""

    tta: str
    temperature: float | None
    threshold: float
    source: str
    recipe: dict[str, Any] | None
    stale_export: str | None

    def report(self) -> dict[str, Any]:
        """predictions.json's ``recipe`` entry."""
        entry: dict[str, Any] = {
            "source": self.source,
            "tta": self.tta,
            "aggregate": PREDICT_AGGREGATE,
            "temperature": self.temperature,
            "threshold": self.threshold,
            "stale_export": self.stale_export,
        }
        if self.recipe is not None:
            entry.update(
                checkpoint=self.recipe["checkpoint"],
                checkpoint_sha256=self.recipe["checkpoint_sha256"],
                sources=self.recipe.get("sources"),
                updated=self.recipe.get("updated"),
                recipe_sha256=self.recipe.get("sha256"),
            )
        return entry

    def line(self) -> str:
        """What is applied and where it comes from, for the console."""
        values = {"tta": self.tta, "aggregate": PREDICT_AGGREGATE}
        values.update(temperature=self.temperature, threshold=self.threshold)
        return f"Recipe: {describe(values)} ({self.source})"


def check_predict_options(cfg) -> None:
    """Refuse malformed ``recipe``, ``tta``, ``threshold`` and ``calibration`` values before any work."""
    if cfg.recipe not in RECIPE_MODES:
        raise ConfigError(f"recipe={cfg.recipe!r} must be one of {list(RECIPE_MODES)}")
    if cfg.tta is not None and cfg.tta not in TTA_MODES:
        raise ConfigError(f"tta={cfg.tta!r} must be one of {list(TTA_MODES)}")
    if cfg.calibration not in CALIBRATION_MODES:
        raise ConfigError(f"calibration={cfg.calibration!r} must be one of {list(CALIBRATION_MODES)}")
    if cfg.threshold is not None:
        try:
            threshold = float(cfg.threshold)
        except (TypeError, ValueError):
            threshold = float("nan")
        if not 0 < threshold < 1:
            raise ConfigError(f"threshold={cfg.threshold} must be a probability in (0, 1)")


def model_recipe(model) -> tuple[dict[str, Any] | None, str]:
    """The recipe that comes with ``model`` and where it is recorded: a checkpoint's run's
    ``recipe.json`` (checked against the checkpoint's content), an export's model card."""
    if model.kind == "onnx":
        where = str(model.path.parent / "model_card.json")
        recipe = model.card.get("recipe")
        return recipe, where if recipe else f"none: {where} carries no recipe"
    run = model.run
    if run is None:
        return None, "none: a checkpoint outside a run directory has no recipe"
    recipe = read_recipe(run)
    if recipe is None:
        return None, (
            f"none: {run} has no {RECIPE_FILE} (an evaluate.py run with tta=..., calibration=temperature "
            "or threshold=... records one)"
        )
    if file_sha256(model.path) != recipe["checkpoint_sha256"]:
        if model.path.resolve() == recipe_checkpoint(run, recipe).resolve():
            raise RecipeError(
                f"{model.path}: changed since {run / RECIPE_FILE} was recorded for it; {_rewrite(run)}, "
                "or pass recipe=none"
            )
        raise RecipeError(
            f"ckpt={model.path} contradicts {run / RECIPE_FILE}, which is the recipe of "
            f"{recipe['checkpoint']} "
            f"(sha256 {recipe['checkpoint_sha256'][:12]}): pass ckpt={run} to follow it, re-run evaluate.py "
            f"run_dir={run} ckpt={model.path} ... to record a recipe for this checkpoint, or pass recipe=none"
        )
    return recipe, str(run / RECIPE_FILE)


def resolve(model, cfg) -> Applied:
    """What predict.py applies: the model's recipe, unless ``recipe=none``; the ``tta``,
    ``threshold`` and ``calibration`` options fill in what no recipe says and must otherwise
    agree with it."""
    if cfg.recipe == "none":
        recipe, source = None, "recipe=none: the options as given"
    else:
        recipe, source = model_recipe(model)
    if recipe is not None and recipe["aggregate"] != PREDICT_AGGREGATE:
        raise RecipeError(
            f"{source}: its aggregate={recipe['aggregate']} is not one predict.py applies (the mean of a "
            f"patient's slices): re-run evaluate.py with aggregate=mean to record another recipe, or pass "
            "recipe=none"
        )
    tta = _option("tta", cfg.tta, recipe, source, model, str)
    threshold = _option("threshold", cfg.threshold, recipe, source, model, float)
    temperature = None if recipe is None else recipe["temperature"]
    if cfg.calibration == "none" and temperature is not None:
        raise RecipeError(
            f"calibration=none contradicts {source} (temperature {temperature:.4f}): leave calibration= out "
            f"to follow it{_change(model, recipe, 'calibration', 'none')}, or pass recipe=none"
        )
    return Applied(tta, temperature, threshold, source, recipe, _stale_note(model))


def _option(key: str, given: Any, recipe: dict[str, Any] | None, source: str, model, kind) -> Any:
    if given is None:
        return kind(DEFAULTS[key] if recipe is None else recipe[key])
    value = kind(given)
    if recipe is None or value == recipe[key] or (kind is float and math.isclose(value, recipe[key])):
        return value
    return _refuse(key, given, recipe, source, model)


def _refuse(key: str, given: Any, recipe: dict[str, Any], source: str, model) -> Any:
    raise RecipeError(
        f"{key}={given} contradicts {source} ({key}={recipe[key]}, from {recipe['sources'][key]}): leave "
        f"{key}= out to follow it (or pass {key}={recipe[key]}){_change(model, recipe, key, given)}, "
        "or pass recipe=none"
    )


def _change(model, recipe: dict[str, Any], key: str, value: Any) -> str:
    """How to change the recipe itself: the evaluate.py command that recorded it, with ``key=value``
    (and a re-export, for an export); nothing when that command would be all defaults."""
    options = dict(recipe.get("options") or {})
    if key not in EVALUATE_DEFAULTS or not options:
        return ""
    options[key] = value
    if not any(options[k] != default for k, default in EVALUATE_DEFAULTS.items()):
        return ""
    run = model.run if model.kind == "checkpoint" else run_of_export(model.path.parent, model.card)
    shown = " ".join(f"{k}={v}" for k, v in options.items() if k != "ckpt" and v != EVALUATE_DEFAULTS.get(k))
    ckpt = "" if options.get("ckpt", "best") == "best" else f" ckpt={options['ckpt']}"
    command = f"evaluate.py run_dir={run or 'RUN'}{ckpt} {shown}"
    return f", change the recipe with {command}" + (" and re-export" if model.kind == "onnx" else "")


def _stale_note(model) -> str | None:
    """predict.py's word on the model's export: stale when the run's recipe changed since."""
    if model.kind == "onnx":
        folder = model.path.parent
        run = run_of_export(folder, model.card)
        if run is None:
            return None
        try:
            current = read_recipe(run)
        except ConfigError as err:
            return f"{folder} cannot be checked against the run's recipe: {err}"
        return stale_reason(model.card, current, folder, run)
    return None if model.run is None else export_staleness(model.run / EXPORT_DIR, model.run)

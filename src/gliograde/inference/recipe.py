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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gliograde.errors import ConfigError
from gliograde.inference.calibration import CALIBRATION_FILE, file_sha256
from gliograde.inference.tta import TTA_MODES
from gliograde.files.sealed import read_sealed, write_sealed

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


def threshold_source(threshold: float, interval: list[float] | None, val) -> str:
    """Where an evaluation's threshold came from: Youden's J on the validation patients, or given."""
    if interval is None:
        return f"evaluate.py threshold={threshold:g}"
    low, high = interval
    return (
        f"threshold=youden on {len(val.patients)} validation patients: the middle of ({low:.3f}, {high:.3f}]"
    )


def record_recipe(
    run: Path,
    checkpoint: Path,
    options: dict[str, Any],
    calibration: dict[str, Any] | None,
    threshold: float,
    threshold_source: str,
    evaluation: Path,
    command: str,
) -> dict[str, Any]:
    """Write the recipe of one evaluation of ``run`` (its checkpoint, its ``options``, the
    ``calibration`` record it fitted or None, and the threshold it used) to ``RUN/recipe.json``;
    print it, what it replaces, and whether ``RUN/export`` is now stale. Return the recipe."""
    run = Path(run)
    tta, aggregate = str(options["tta"]), str(options["aggregate"])
    try:
        previous = read_recipe(run)
    except ConfigError:  # a damaged or older record is being replaced: nothing to compare
        previous = None
    try:
        shown = str(Path(checkpoint).resolve().relative_to(run.resolve()))
    except ValueError:  # a checkpoint outside the run (ckpt=PATH)
        shown = str(Path(checkpoint).resolve())
    sha = calibration["checkpoint_sha256"] if calibration else file_sha256(checkpoint)
    if calibration:
        temperature_source = (
            f"{run / CALIBRATION_FILE}: fitted on {len(calibration['val_patients'])} validation patients "
            f"(patient NLL {calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f})"
        )
    else:
        temperature_source = "none: evaluated with calibration=none"
    recipe = {
        "checkpoint": shown,
        "checkpoint_sha256": sha,
        "tta": tta,
        "aggregate": aggregate,
        "temperature": float(calibration["temperature"]) if calibration else None,
        "threshold": float(threshold),
        "sources": {
            "checkpoint": f"evaluate.py ckpt={options['ckpt']}, sha256 {sha[:12]}",
            "tta": f"evaluate.py tta={tta}",
            "aggregate": f"evaluate.py aggregate={aggregate}",
            "temperature": temperature_source,
            "threshold": threshold_source,
        },
        "options": {key: options[key] for key in ("ckpt", *EVALUATE_DEFAULTS)},
        "evaluation": str(evaluation),
        "command": command,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    recipe = write_sealed(run / RECIPE_FILE, recipe)
    values = recipe_values(recipe, sha)
    print(f"Recipe of {run} ({run / RECIPE_FILE}): {shown}, {describe(values)}")
    print("  predict.py and export follow it")
    if previous is not None and recipe_values(previous, sha) != values:
        print(f"  It replaces: {previous['checkpoint']}, {describe(recipe_values(previous, sha))}")
    stale = export_staleness(run / EXPORT_DIR, run)
    if stale:
        print(f"Note: {stale}")
    return recipe


# ------------------------------------------------------------------------------ exports
def export_staleness(folder: Path, run: Path) -> str | None:
    """Why the export ``folder`` of ``run`` no longer applies the run's recipe; None when it
    does, or when ``folder`` holds no export. A card or recipe that cannot be read says so."""
    from gliograde.inference.models import CARD_FILE, read_card

    if not (Path(folder) / CARD_FILE).is_file():
        return None
    try:
        card = read_card(Path(folder))
        current = read_recipe(run)
    except ConfigError as err:
        return f"{folder} cannot be checked against the run's recipe: {err}"
    return stale_reason(card, current, Path(folder), Path(run))


def stale_reason(card: dict[str, Any], current: dict[str, Any] | None, folder: Path, run: Path) -> str | None:
    """Why an export (its verified ``card``) differs from ``current``, its run's recipe; None
    when both grade every patient alike."""
    sha = card["model"]["checkpoint_sha256"]
    exported, now = recipe_values(card.get("recipe"), sha), recipe_values(current, sha)
    if exported == now:
        return None
    where = f"{run / RECIPE_FILE}" + (f" (updated {current['updated']})" if current else "")
    if exported["checkpoint_sha256"] != now["checkpoint_sha256"]:
        detail = f"the run's recipe is for another checkpoint ({current['checkpoint'] if current else '?'})"
    else:
        detail = f"it applies {describe(exported)}, but {where} says {describe(now)}"
    return f"{folder} is stale: {detail}; re-export it (python -m gliograde.export {run})"


def run_of_export(folder: Path, card: dict[str, Any]) -> Path | None:
    """The run an export folder was made from, when it can be reached: the folder's parent (a
    copied run keeps its export inside), else the run directory its card names."""
    candidates = [Path(folder).parent]
    named = (card.get("training") or {}).get("run_dir")
    if named:
        candidates.append(Path(named))
    for run in candidates:
        if (run / "checkpoints").is_dir() and (run / "config.yaml").is_file():
            return run
    return None


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

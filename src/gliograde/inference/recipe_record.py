"""Recording a run's recipe after evaluate.py: the checkpoint, options, fitted temperature and
threshold it used, what the record replaces, and whether the run's export is now stale."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gliograde.errors import ConfigError
from gliograde.files.sealed import write_sealed
from gliograde.inference.calibration import CALIBRATION_FILE, file_sha256
from gliograde.inference.export_staleness import export_staleness
from gliograde.inference.recipe import EVALUATE_DEFAULTS, EXPORT_DIR, RECIPE_FILE, describe, read_recipe, recipe_values


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

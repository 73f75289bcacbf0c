"""Whether a run's export still matches the run: its model card against the run's current recipe and
checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gliograde.errors import ConfigError
from gliograde.inference.recipe import RECIPE_FILE, describe, read_recipe, recipe_values


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

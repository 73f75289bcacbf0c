"""Command-line overrides that change nothing: data.slices values the chosen slice strategy does not
read, warned about before the run starts."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from omegaconf import DictConfig


# Which data.slices keys each strategy reads: any other one given is silently unused.
_SLICE_KEYS = {"k": ("tumor_topk",), "min_area": ("tumor_all",), "min_brain_fraction": ("brain",),
               "n": ("middle",), "z_min": ("range",), "z_max": ("range",)}


def ineffective_overrides(cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """Warnings for command-line ``data.slices.*`` values the chosen strategy does not read."""
    data = cfg.get("data")
    if data is None or "slices" not in data:
        return []
    strategy = data.slices.get("strategy")
    notes = []
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        name = key.removeprefix("data.slices.")
        if key.startswith("data.slices.") and strategy not in _SLICE_KEYS.get(name, (strategy,)):
            users = " or ".join(_SLICE_KEYS[name])
            notes.append(
                f"warning: {key}={value} has no effect with data.slices.strategy={strategy} "
                f"(only {users} reads it)"
            )
    return notes


def warn_ineffective_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Print :func:`ineffective_overrides` to stderr."""
    for note in ineffective_overrides(cfg, overrides):
        print(note, file=sys.stderr)

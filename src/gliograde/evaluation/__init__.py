"""Patient-level evaluation: aggregation, metrics with intervals, plots, Grad-CAM, reports.

``predictions_table(run_dir, split)`` reads an evaluation's patient predictions back with the
run's splits joined (see :mod:`gliograde.evaluation.tables`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["predictions_table"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: the config schema imports this package, and must stay light.
    if name == "predictions_table":
        from gliograde.evaluation.tables import predictions_table

        return predictions_table
    raise AttributeError(name)

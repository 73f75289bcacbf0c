"""The sweep's plot: the monitored metric (with its interval) against each swept parameter.

Jobs that share a parameter's value (every job of a grid shares some) are set side by side
around that value, best first, and each is labelled with its job number in a row along the
bottom of the panel, so none hides another and no label covers another.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

DODGE = 0.08
"""Spacing of side-by-side points: in category widths, or a fraction of a numeric axis's span."""
FEW = 8
"""Numbers with at most this many distinct values (seeds, a context of 0 or 1, a small grid) are
shown as categories: side-by-side points then never read as values between the grid's."""


def axis_positions(values: pd.Series) -> tuple[np.ndarray, list[str] | None, bool]:
    """``(x, tick labels, log scale)`` of one parameter's values: numbers on a numeric axis (log
    when positive and spanning two decades or more), anything else (or a mix, or unset values)
    on a categorical axis in sorted order."""
    raw = values.map(lambda v: "(unset)" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    numeric = pd.to_numeric(raw, errors="coerce")
    if len(raw) and numeric.notna().all():
        x = numeric.to_numpy(dtype=float)
        log = bool((x > 0).all() and x.max() / x.min() >= 100)
        if log or len(np.unique(x)) > FEW:
            return x, None, log
        ticks = sorted(raw.unique(), key=lambda t: float(t))  # in numeric order
        return raw.map({t: i for i, t in enumerate(ticks)}).to_numpy(dtype=float), ticks, False
    ticks = sorted(raw.unique())
    return raw.map({t: i for i, t in enumerate(ticks)}).to_numpy(dtype=float), ticks, False


def dodge(x: np.ndarray, log: bool = False, categorical: bool = False) -> np.ndarray:
    """``x`` with the points that share a value spread side by side around it, in table order."""
    x = np.asarray(x, dtype=float)
    t = np.log10(x) if log else x.copy()
    if categorical:
        step = DODGE * 3
    else:
        span = float(np.ptp(t)) if len(t) else 0.0
        step = DODGE * (span if span > 0 else 1.0)
    out = t.copy()
    for value in np.unique(t):
        same = np.flatnonzero(t == value)
        if len(same) > 1:
            width = min(step, 0.8 / len(same)) if categorical else step
            out[same] = value + (np.arange(len(same)) - (len(same) - 1) / 2) * width
    return 10**out if log else out


def plot_png(table: pd.DataFrame, swept: list[str], monitor: str) -> bytes:
    """The plot of the finished jobs in ``table``, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = swept or ["job"]
    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.6), squeeze=False)
    try:
        y = pd.to_numeric(table.get(monitor, pd.Series(np.nan, index=table.index)), errors="coerce")
        low = pd.to_numeric(table.get(f"{monitor}_ci_low", y), errors="coerce")
        high = pd.to_numeric(table.get(f"{monitor}_ci_high", y), errors="coerce")
        errors = np.vstack([(y - low).fillna(0).clip(lower=0), (high - y).fillna(0).clip(lower=0)])
        jobs = table["job"].astype(str).tolist()
        for ax, param in zip(axes[0], params):
            values = table[param] if param in table else pd.Series([None] * len(table), index=table.index)
            x, ticks, log = axis_positions(values)
            x = dodge(x, log=log, categorical=ticks is not None)
            ax.errorbar(x, y, yerr=errors, fmt="o", capsize=2, markersize=4)
            # the job numbers in a band of their own below the points, one upright label each
            finite = np.isfinite(y.to_numpy(dtype=float))
            if finite.any():
                lowest = float(np.nanmin(np.where(finite, (y - errors[0]).to_numpy(dtype=float), np.nan)))
                highest = float(np.nanmax(np.where(finite, (y + errors[1]).to_numpy(dtype=float), np.nan)))
                span = max(highest - lowest, 0.05)
                ax.set_ylim(lowest - 0.3 * span, highest + 0.05 * span)
            for job, xi, yi in zip(jobs, x, y):
                if np.isfinite(yi):
                    ax.annotate(
                        job, (xi, 0.01), xycoords=("data", "axes fraction"), rotation=90,
                        ha="center", va="bottom", fontsize=6, color="0.3",
                    )
            if log:
                ax.set_xscale("log")  # learning rates and weight decays span decades
            if ticks is not None:
                ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right")
                ax.set_xlim(-0.6, len(ticks) - 0.4)
            ax.set_xlabel(f"{param}  (numbers at the bottom: jobs)")
            ax.set_ylabel(monitor)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buffer.getvalue()

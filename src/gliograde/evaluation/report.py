"""Where an evaluation's report goes, and its files: metrics.json, figures, report.html, the table."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gliograde.files.atomic import write_text
from gliograde.evaluation.figures import save_png
from gliograde.evaluation.metrics import METRICS
from gliograde.evaluation.report_html import evaluation_page, write_page
from gliograde.evaluation.summary import (
    describe,
    evaluation_headline,
    evaluation_notes,
    interval_text,
    value_text,
)
from gliograde.files.output_folder import is_disk_error, reason, writable

DEFAULT_THRESHOLD = 0.5
DEFAULT_AGGREGATE = "mean"
DEFAULT_CKPT = "best"
DEFAULT_TTA = "none"
DEFAULT_CALIBRATION = "none"
# What an evaluation writes into its folder: an existing folder holding anything else is not replaced.
REPORT_FILES = ("metrics.json", "report.html", "*.csv", "*.png")


def report_dir(cfg: DictConfig, run: Path, data_overrides: list[str]) -> Path:
    """``output_dir`` if given, else ``RUN/eval/<name>`` named by the options that change the report.

    The default options give ``<split>`` (e.g. ``test``); each other choice adds a part, in this
    order: ``ckpt-<name>`` (not the best checkpoint), the threshold (``youden`` or ``t<value>``),
    the aggregate (``vote``, ``tumor_weighted``), the test-time augmentation (``flip``,
    ``flip_rot``), the calibration (``temperature``), ``masks-hidden``, ``segmenter``, the ``mask_free`` rule
    (``brain``...) and ``data-<hash>`` of the ``data.*`` overrides. So ``threshold=youden
    aggregate=vote`` writes ``RUN/eval/test_youden_vote/``.
    """
    if cfg.output_dir:
        return Path(cfg.output_dir)
    parts = [str(cfg.split)]
    if str(cfg.ckpt) != DEFAULT_CKPT:
        parts.append(f"ckpt-{Path(str(cfg.ckpt)).stem}")
    if str(cfg.threshold) == "youden":
        parts.append("youden")
    elif float(cfg.threshold) != DEFAULT_THRESHOLD:
        parts.append(f"t{float(cfg.threshold):g}")
    if cfg.aggregate != DEFAULT_AGGREGATE:
        parts.append(str(cfg.aggregate))
    if str(cfg.tta) != DEFAULT_TTA:
        parts.append(str(cfg.tta))
    if str(cfg.calibration) != DEFAULT_CALIBRATION:
        parts.append(str(cfg.calibration))
    if str(cfg.get("masks", "use")) != "use":
        parts.append(f"masks-{cfg.masks}")
    if cfg.get("segmenter"):
        parts.append("segmenter")
    if cfg.get("mask_free"):
        parts.append(str(cfg.mask_free))
    if data_overrides:
        digest = hashlib.sha1("\n".join(sorted(data_overrides)).encode()).hexdigest()[:8]
        parts.append(f"data-{digest}")
    return run / "eval" / re.sub(r"[^A-Za-z0-9._-]", "-", "_".join(parts))


def write_metrics(out: Path, report: dict[str, Any]) -> None:
    """``metrics.json``, atomically."""
    write_text(out / "metrics.json", json.dumps(report, indent=2) + "\n")


def save_figures(figures: dict[str, Any], out: Path) -> list[Path]:
    """Each figure as ``out/<name>.png`` (atomically); returns the PNG paths."""
    paths = []
    for name, figure in figures.items():
        save_png(figure, out / f"{name}.png")
        paths.append(out / f"{name}.png")
    return paths


def tensorboard_dir(run: Path) -> Path | None:
    """The run's TensorBoard folder to log the figures to; None, said in one line, when the run
    (or that folder) cannot be written: a read-only run is left as it is."""
    tensorboard = run / "tensorboard"
    if writable(tensorboard if tensorboard.is_dir() else run):
        return tensorboard
    print(f"Note: {run} cannot be written (read-only?): the figures are not logged to its TensorBoard")
    return None


def log_figures(figures: dict[str, Any], tensorboard: Path | None, tag: str) -> None:
    """Log the figures to TensorBoard under ``<tag>/<name>`` (nothing when ``tensorboard`` is
    None). A full or read-only disk there leaves no partial events file, only a one-line note."""
    if tensorboard is None or not figures:
        return
    from torch.utils.tensorboard import SummaryWriter

    before = set(tensorboard.glob("events.out.tfevents.*"))
    try:
        writer = SummaryWriter(str(tensorboard))
        try:
            for name, figure in figures.items():
                writer.add_figure(f"{tag}/{name}", figure, close=False)
        finally:
            writer.close()
    except OSError as exc:
        if not is_disk_error(exc):
            raise
        for partial in set(tensorboard.glob("events.out.tfevents.*")) - before:
            partial.unlink(missing_ok=True)
        print(f"Note: the figures are not logged to {tensorboard} ({reason(exc)})")


def close_figures(figures: dict[str, Any]) -> None:
    """Free the figures' memory."""
    import matplotlib.pyplot as plt

    for figure in figures.values():
        plt.close(figure)


def write_html(out: Path, report: dict[str, Any], images: list[Path]) -> None:
    """``report.html``: the metrics and the figures on one self-contained page."""
    write_page(out / "report.html", evaluation_page(report, images))


def format_report(report: dict[str, Any]) -> str:
    """A readable table of metrics.json: the headline first, then the metrics with their
    intervals and the notes (the same lines as report.html, from :mod:`gliograde.evaluation.summary`)."""
    lines = [*evaluation_headline(report), describe(report)]
    if "patient" in report:
        level = int(round(report["ci_level"] * 100))
        lines.append(
            f"{'metric':<18} {'patient':>8} {f'[{level}% CI]':>17}  {'interval':<14} {'slice':>8} "
            f"{f'[{level}% CI]':>17}"
        )
        for name in METRICS:
            p, s = report["patient"][name], report["slice"][name]
            lines.append(
                f"{name:<18} {value_text(p['value']):>8} {interval_text(p):>17}  {p['ci_method']:<14} "
                f"{value_text(s['value']):>8} {interval_text(s):>17}"
            )
    lines += evaluation_notes(report)
    return "\n".join(lines)


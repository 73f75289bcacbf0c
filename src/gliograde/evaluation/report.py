"""Where an evaluation's report goes, and its files: metrics.json, figures, report.html, the table."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gliograde.atomic import write_text
from gliograde.evaluation.figures import save_png
from gliograde.evaluation.intervals import UNRELIABLE_NOTE, bounds_text
from gliograde.evaluation.metrics import METRICS
from gliograde.evaluation.report_html import evaluation_page, write_page
from gliograde.output_folder import is_disk_error, reason, writable
from gliograde.segmentation.predicted import segmenter_note

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
    """A readable table of metrics.json."""
    starred = bool(report.get("threshold_unreliable"))
    lines = [
        f"Evaluated {report['n_patients']} patients ({report['n_slices']} slices), split={report['split']}, "
        f"aggregate={report['aggregate']}, threshold={report['threshold']:.3f}"
        f"{'*' if starred else ''}, tta={report['tta']}"
    ]
    if report.get("mask_free_note"):
        lines.append(f"Note: {report['mask_free_note']}")
    if segmenter_note(report.get("segmenter")):
        lines.append(f"Note: {segmenter_note(report.get('segmenter'))}")
    calibration = report["calibration"]
    if calibration["method"] == "temperature":
        temperature = calibration["temperature"]
        star = "*" if calibration.get("unreliable") else ""
        starred |= bool(star)
        lines.append(f"calibration=temperature: T={temperature:.4f}{star} (fitted on the val patients)")
        if calibration.get("note"):
            lines.append(f"Note: {calibration['note']}")
        for name, entry in calibration.get("patient", {}).items():
            lines.append(f"  patient {name}: {_fmt(entry['before'])} before, {_fmt(entry['after'])} after")
    if "patient" not in report:
        lines.append(report.get("note", ""))
        if starred:
            lines.append(UNRELIABLE_NOTE)
        return "\n".join(lines)
    level = int(round(report["ci_level"] * 100))
    lines.append(
        f"{'metric':<18} {'patient':>8} {f'[{level}% CI]':>16}   {'slice':>8} {f'[{level}% CI]':>16}"
    )
    for name in METRICS:
        p, s = report["patient"][name], report["slice"][name]
        lines.append(f"{name:<18} {_fmt(p['value']):>8} {_ci(p):>17}  {_fmt(s['value']):>8} {_ci(s):>17}")
    counts = ", ".join(f"{k}: {v}" for k, v in report["class_counts"].items())
    base = report["majority_baseline"]
    lines.append(f"patients per class: {counts}; majority-class baseline accuracy {base['accuracy']:.3f}")
    entries = [report[scope][name] for scope in ("patient", "slice") for name in METRICS]
    if starred or any(e.get("unreliable") and e["value"] is not None for e in entries):
        lines.append(UNRELIABLE_NOTE)
    notes = sorted({e["ci_note"] for e in entries if e.get("ci_note")})
    lines += [f"[{note.split(':')[0]}]: {note.split(':', 1)[1].strip()}" for note in notes if ":" in note]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ci(entry: dict[str, Any]) -> str:
    """``[low, high]``, ``[not estimable]`` (see the notes under the table) or ``n/a``; ``*``
    when a class it rests on has fewer than MIN_PER_CLASS patients."""
    marker = "*" if entry.get("unreliable") and entry.get("value") is not None else ""
    if entry["ci_low"] is not None:
        return bounds_text(entry["ci_low"], entry["ci_high"]) + marker
    if entry.get("ci_note") and entry.get("value") is not None:
        return f"[{entry['ci_note'].split(':')[0]}]{marker}"
    return "n/a"

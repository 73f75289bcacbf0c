"""What a reader is told about a set of graded patients: the headline (patient AUROC and
balanced accuracy together, the threshold and where it came from, the calls), the warnings of a
classifier that does not separate the classes, and the notes under the metrics table.

One source for every place that says it: train.py's closing summary, evaluate.py's and
predict.py's printed tables and their report.html pages all render these lines, so a page never
says less than the terminal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gliograde.evaluation.intervals import UNRELIABLE_NOTE, bounds_text

CHANCE = 0.5
"""The balanced accuracy of a classifier that calls every patient one class (or guesses)."""

_METHODS = {
    "wilson": "Wilson score interval",
    "mover-wilson": "MOVER-Wilson (from the Wilson intervals of sensitivity and specificity)",
    "delong": "DeLong's variance",
    "newcombe-score": "Newcombe's score interval (DeLong's variance is zero here)",
    "bootstrap": "percentile bootstrap over patients",
    "bootstrap-patients": "percentile bootstrap over patients (a patient's slices resampled together)",
}


def value_text(value: float | None) -> str:
    """A metric as every summary shows it: three decimals, or ``n/a`` when undefined."""
    return "n/a" if value is None else f"{value:.3f}"


def interval_text(entry: Mapping[str, Any]) -> str:
    """``[low, high]``, ``[not estimable]`` (see the notes under the table) or ``n/a``; ``*``
    when a class it rests on has fewer than MIN_PER_CLASS patients."""
    marker = "*" if entry.get("unreliable") and entry.get("value") is not None else ""
    if entry.get("ci_low") is not None:
        return bounds_text(entry["ci_low"], entry["ci_high"]) + marker
    if entry.get("ci_note") and entry.get("value") is not None:
        return f"[{entry['ci_note'].split(':')[0]}]{marker}"
    return "n/a"


def calls_text(calls: Mapping[str, int]) -> str:
    """``LGG 2, HGG 7``: how many patients were called each class."""
    return ", ".join(f"{name} {int(n)}" for name, n in calls.items())


def threshold_line(threshold: float, source: str, positive: str, starred: bool = False) -> str:
    """The threshold, the class whose probability it cuts, and where it came from."""
    star = "*" if starred else ""
    return (
        f"Threshold {threshold:.3f}{star} on p({positive}) (a patient is called {positive} at or above it): "
        f"{source}"
    )


def warnings(
    calls: Mapping[str, int], balanced_accuracy: float | None, threshold: float
) -> list[str]:
    """Lines that flag a useless classifier: every patient called one class, or a balanced
    accuracy at or below chance. Empty for a classifier that separates the classes."""
    total = sum(int(n) for n in calls.values())
    called = [name for name, n in calls.items() if int(n) > 0]
    if total > 1 and len(called) == 1:
        return [
            f"Warning: every one of the {total} patients was called {called[0]}: at threshold "
            f"{threshold:.3f} this classifier does not tell the classes apart"
        ]
    if balanced_accuracy is not None and balanced_accuracy <= CHANCE:
        return [
            f"Warning: balanced accuracy {balanced_accuracy:.3f} is at or below chance ({CHANCE:.3f}): "
            f"at threshold {threshold:.3f} this classifier is no better than calling every patient one class"
        ]
    return []


def headline(
    n_patients: int,
    what: str,
    auroc: Mapping[str, Any] | None,
    balanced: Mapping[str, Any] | None,
    class_counts: Mapping[str, int] | None,
    calls: Mapping[str, int],
    threshold: float,
    source: str,
    positive: str,
    starred: bool = False,
) -> list[str]:
    """The first lines: patient AUROC and balanced accuracy (with their intervals when the
    entries carry them), the threshold and its source, and the calls; then any warning."""
    patients = " ".join(str(part) for part in (n_patients, what, "patients") if part)
    if auroc is None or balanced is None:  # no labels: nothing to score
        lines = [f"{patients}, no labels: predictions only"]
    else:
        counts = f" ({calls_text(class_counts)})" if class_counts else ""
        lines = [
            f"Patient AUROC {value_text(auroc.get('value'))}{_bracket(auroc)}, balanced accuracy "
            f"{value_text(balanced.get('value'))}{_bracket(balanced)} on {patients}{counts}"
        ]
    lines.append(threshold_line(threshold, source, positive, starred))
    lines.append(f"Called: {calls_text(calls)}")
    labelled = balanced is not None
    return lines + (warnings(calls, balanced.get("value"), threshold) if labelled else [])


def _bracket(entry: Mapping[str, Any]) -> str:
    """`` [low, high]`` after a value that carries an interval; nothing for a bare value."""
    return f" {interval_text(entry)}" if "ci_method" in entry else ""


def evaluation_headline(report: Mapping[str, Any]) -> list[str]:
    """The headline of one evaluate.py report (its metrics.json content)."""
    classes = report["classes"]
    patient = report.get("patient")
    return headline(
        report["n_patients"],
        "" if report["split"] == "all" else str(report["split"]),
        patient and patient["auroc"],
        patient and patient["balanced_accuracy"],
        report.get("class_counts"),
        report["calls"],
        report["threshold"],
        report["threshold_source"],
        classes[-1],
        bool(report.get("threshold_unreliable")),
    )


def describe(report: Mapping[str, Any]) -> str:
    """What an evaluation graded and how: patients, slices, split, aggregate, tta."""
    return (
        f"Evaluated {report['n_patients']} patients ({report['n_slices']} slices), split={report['split']}, "
        f"aggregate={report['aggregate']}, tta={report['tta']}"
    )


def evaluation_notes(report: Mapping[str, Any]) -> list[str]:
    """The lines under an evaluation's metrics table: the majority-class baseline, the ``*``
    footnote, the interval method of each metric, why an interval is missing, the calibration,
    the mask notes and the patients that share an id or images with training patients."""
    notes = []
    if "patient" in report:
        base = report["majority_baseline"]
        majority = report["classes"][base["class"]]
        notes.append(
            f"Majority-class baseline: calling every patient {majority} scores accuracy "
            f"{base['accuracy']:.3f}, balanced accuracy {base['balanced_accuracy']:.3f}"
        )
    if _starred(report):
        notes.append(UNRELIABLE_NOTE)
    if "patient" in report:
        notes += method_notes(report)
        entries = [report[scope][name] for scope in ("patient", "slice") for name in report["patient"]]
        reasons = sorted({e["ci_note"] for e in entries if e.get("ci_note") and e.get("value") is not None})
        notes += [f"[{r.split(':')[0]}]: {r.split(':', 1)[1].strip()}" for r in reasons if ":" in r]
    notes += calibration_notes(report.get("calibration") or {"method": "none"})
    notes += common_notes(report)
    return notes


def method_notes(report: Mapping[str, Any]) -> list[str]:
    """Which interval method each metric's interval comes from, one line per method."""
    level = round(float(report["ci_level"]) * 100)
    by_method: dict[str, list[str]] = {}
    for name, entry in report["patient"].items():
        by_method.setdefault(entry["ci_method"], []).append(f"patient {name}")
    slice_methods = {entry["ci_method"] for entry in report["slice"].values()}
    for method in sorted(slice_methods):
        by_method.setdefault(method, []).append("every slice metric")
    resamples = report.get("bootstrap_resamples")
    lines = []
    for method, names in by_method.items():
        label = _METHODS.get(method, method)
        if method.startswith("bootstrap") and resamples:
            label += f", {resamples} resamples"
        lines.append(f"{level}% intervals, {label}: {', '.join(names)}")
    return lines


def calibration_notes(calibration: Mapping[str, Any]) -> list[str]:
    """The temperature, where it was fitted and its note; none without calibration."""
    if calibration.get("method") != "temperature":
        return ["Calibration: none (probabilities as the model gives them)"]
    star = "*" if calibration.get("unreliable") else ""
    where = (
        f"fitted on {calibration['val_patients']} validation patients"
        if "val_patients" in calibration
        else f"from {calibration.get('source', 'the recipe')}"
    )
    lines = [f"Calibration: temperature scaling, T={calibration['temperature']:.4f}{star}, {where}"]
    if "val_patients" in calibration:  # an evaluation's: it fitted T and scored with it
        stored = f" (T is stored in {calibration['file']})" if calibration.get("file") else ""
        lines.append(f"Calibration: the metrics and tables use the calibrated probabilities{stored}")
    if calibration.get("note"):
        lines.append(f"Note: {calibration['note']}")
    for name, entry in (calibration.get("patient") or {}).items():
        lines.append(
            f"Calibration, patient {name}: {value_text(entry['before'])} before, "
            f"{value_text(entry['after'])} after"
        )
    return lines


def common_notes(report: Mapping[str, Any]) -> list[str]:
    """Notes both evaluate.py and predict.py reports can carry: patients graded without a mask,
    the segmenter's masks and patients that share an id or images with training patients."""
    from gliograde.segmentation.predicted import segmenter_note

    notes = []
    if report.get("mask_free_note"):
        notes.append(f"Note: {report['mask_free_note']}")
    seg = segmenter_note(report.get("segmenter"))
    if seg:
        notes.append(f"Note: {seg}")
    notes += [f"Warning: {line}" for line in report.get("identity_notes", [])]
    return notes


def _starred(report: Mapping[str, Any]) -> bool:
    """Whether any number of the report carries the ``*`` of UNRELIABLE_NOTE."""
    if report.get("threshold_unreliable") or (report.get("calibration") or {}).get("unreliable"):
        return True
    if "patient" not in report:
        return False
    entries = [report[scope][name] for scope in ("patient", "slice") for name in report["patient"]]
    return any(e.get("unreliable") and e.get("value") is not None for e in entries)


def calls_of(predictions: Sequence[str], classes: Sequence[str]) -> dict[str, int]:
    """How many of ``predictions`` (class names) are each class, in the order of ``classes``."""
    return {name: sum(1 for p in predictions if p == name) for name in classes}


def prediction_headline(report: Mapping[str, Any]) -> list[str]:
    """The headline of one predict.py report (its predictions.json content)."""
    classes = report["classes"]
    graded = [row["prediction"] for row in report["patients"] if row["prediction"] in classes]
    lines = [
        f"Predicted {len(report['patients'])} patient(s) with {report['model']} ({report['model_kind']}), "
        f"tta={report['tta']}",
        threshold_line(report["threshold"], report["recipe"]["source"], classes[-1]),
        f"Called: {calls_text(calls_of(graded, classes))}",
    ]
    reasons = [row["prediction"] for row in report["patients"] if row["prediction"] not in classes]
    if reasons:
        counts = {reason: reasons.count(reason) for reason in dict.fromkeys(reasons)}
        lines.append(f"Not graded: {len(reasons)} ({', '.join(f'{n} {reason}' for reason, n in counts.items())})")
    return lines


def prediction_notes(report: Mapping[str, Any]) -> list[str]:
    """The lines under predict.py's per-patient table."""
    notes = calibration_notes(report.get("calibration") or {"method": "none"})
    notes += common_notes(report)
    for row in report["patients"]:
        if row.get("training_patient"):
            notes.append(
                f"Warning: patient {row['patient_id']} is the model's training patient "
                f"{row['training_patient']}: its prediction is not an honest estimate"
            )
        if row.get("note"):
            notes.append(f"{row['patient_id']}: not graded: {row['note']}")
    if report.get("skipped"):
        notes.append(f"Skipped {len(report['skipped'])} patient(s), listed in skipped.csv")
    return notes


def run_headline(out: Path, threshold: float | str) -> tuple[list[str], dict[str, float]]:
    """The headline of a training run's test patients, from its ``predictions_test.csv`` (and,
    for ``threshold=youden``, the threshold chosen on ``predictions_val.csv``), and the patient
    metrics at that threshold. Nothing when the run has no labelled two-class test table."""
    import numpy as np
    import pandas as pd

    from gliograde.evaluation.metrics import binary_metrics, youden_interval, youden_threshold

    def read(split: str) -> pd.DataFrame | None:
        path = out / f"predictions_{split}.csv"
        return pd.read_csv(path, keep_default_na=False) if path.is_file() else None

    test = read("test")
    columns = [c for c in (test.columns if test is not None else []) if c.startswith("prob_")]
    if test is None or len(columns) != 2:
        return [], {}
    classes = [c[len("prob_") :] for c in columns]
    test = test[test["label"].isin(classes)]
    if test.empty:
        return [], {}

    def labels_probs(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return frame["label"].map(classes.index).to_numpy(int), frame[columns[1]].to_numpy(float)

    source = f"train.py threshold={threshold}, not chosen on the validation patients"
    if str(threshold) == "youden":
        val = read("val")
        val = val[val["label"].isin(classes)] if val is not None else None
        val_labels, val_probs = labels_probs(val) if val is not None else (np.zeros(0, int), np.zeros(0))
        if 0 < val_labels.sum() < len(val_labels):
            low, high = youden_interval(val_labels, val_probs)
            chosen = youden_threshold(val_labels, val_probs)
            source = (
                f"threshold=youden, the middle of ({low:.3f}, {high:.3f}], where sensitivity + specificity "
                f"is best on the {len(val_labels)} validation patients"
            )
        else:
            chosen = 0.5
            source = "threshold=youden needs both classes among the validation patients: 0.5 used instead"
    else:
        chosen = float(threshold)
    labels, probs = labels_probs(test)
    scores = test["score"].to_numpy(float) if "score" in test.columns else None
    metrics = {k: float(v) for k, v in binary_metrics(labels, probs, chosen, scores).items()}
    defined = {k: (None if np.isnan(v) else v) for k, v in metrics.items()}
    class_counts = {name: int((labels == k).sum()) for k, name in enumerate(classes)}
    calls = {classes[0]: int((probs < chosen).sum()), classes[1]: int((probs >= chosen).sum())}
    lines = headline(
        len(labels), "test", {"value": defined["auroc"]}, {"value": defined["balanced_accuracy"]},
        class_counts, calls, chosen, source, classes[1],
    )
    return lines, {**metrics, "threshold": chosen}

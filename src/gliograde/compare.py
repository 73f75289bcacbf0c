"""``python -m gliograde.compare RUN_A RUN_B [--split test]``: is run A better than run B?

Reads each run's patient predictions for the split (``RUN/eval/SPLIT/patient_predictions.csv``
of evaluate.py when present, else ``RUN/predictions_SPLIT.csv`` of training, called at 0.5) and
compares them on the same patients: the paired difference in AUROC (DeLong's test for
correlated ROC curves), balanced accuracy (exact stratified McNemar) and accuracy (exact
McNemar), each with an interval and a p-value.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gliograde.files.atomic import write_text
from gliograde.errors import GliogradeError, exit_on_user_error
from gliograde.evaluation.delong import delong_test
from gliograde.evaluation.intervals import UNRELIABLE_NOTE, format_interval, patient_intervals
from gliograde.evaluation.paired import compare_calls
from gliograde.files.output_folder import check_file_target, output_errors
from gliograde.models.patient_scores import table_scores
from gliograde.files.tables import read_table

SPLITS = ("test", "val", "train", "all")
SHOWN = ("auroc", "balanced_accuracy", "accuracy")


class CompareError(GliogradeError, ValueError):
    """The two runs cannot be compared as asked."""


@dataclass
class RunPredictions:
    """One run's patient-level predictions on one split."""

    source: Path
    classes: list[str]
    threshold: float
    labels: dict[str, str]  # patient -> class name
    probs: dict[str, float]  # patient -> probability of classes[1]
    scores: dict[str, float]  # patient -> log-odds of classes[1]: what AUROC ranks
    predicted: dict[str, str]  # patient -> class name
    split: str | None = None  # as evaluate.py recorded it, where known
    cohort: str | None = None  # the patient folder evaluate.py read, where known


def load_predictions(run: Path, split: str) -> RunPredictions:
    """The patient predictions of ``run`` on ``split`` (evaluate.py's if present, else training's).

    ``run`` may also be an evaluate.py output folder (one holding ``patient_predictions.csv``,
    e.g. ``RUN/eval/all_data-...`` of an external cohort); ``split`` is then not used.
    """
    if (run / "patient_predictions.csv").is_file():
        return _read_evaluated(run / "patient_predictions.csv")
    evaluated = run / "eval" / split / "patient_predictions.csv"
    trained = run / f"predictions_{split}.csv"
    if evaluated.is_file():
        return _read_evaluated(evaluated)
    if trained.is_file():
        return _read_trained(trained)
    raise CompareError(
        f"{run}: no patient predictions for split={split} (neither {evaluated} nor {trained}); "
        f"run python evaluate.py run_dir={run} split={split}"
    )


def _rows(path: Path, required: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    missing = [c for c in required if c not in columns]
    if missing:
        raise CompareError(f"{path}: missing column(s) {missing}; expected a patient predictions file")
    rows = frame.to_dict("records")
    seen: set[str] = set()
    for row in rows:
        if row["patient_id"] in seen:
            raise CompareError(f"{path}: patient {row['patient_id']} appears twice")
        seen.add(row["patient_id"])
        if not row["label"]:
            raise CompareError(f"{path}: patient {row['patient_id']} has no label; a comparison needs labels")
    return columns, rows


def _read_evaluated(path: Path) -> RunPredictions:
    _, rows = _rows(path, ["patient_id", "label", "probability", "prediction"])
    report_path = path.parent / "metrics.json"
    if not report_path.is_file():
        raise CompareError(f"{report_path}: missing beside {path.name}; rerun evaluate.py for this split")
    report = json.loads(report_path.read_text())
    return RunPredictions(
        source=path,
        classes=list(report["classes"]),
        threshold=float(report["threshold"]),
        labels={r["patient_id"]: r["label"] for r in rows},
        probs={r["patient_id"]: float(r["probability"]) for r in rows},
        scores=dict(zip((r["patient_id"] for r in rows), table_scores(rows, "probability"))),
        predicted={r["patient_id"]: r["prediction"] for r in rows},
        split=report.get("split"),
        cohort=report.get("cohort"),
    )


def _read_trained(path: Path) -> RunPredictions:
    columns, rows = _rows(path, ["patient_id", "label"])
    prob_columns = [c for c in columns if c.startswith("prob_")]
    if len(prob_columns) != 2:
        raise CompareError(f"{path}: the comparison covers two classes; found columns {prob_columns}")
    classes = [c[len("prob_") :] for c in prob_columns]
    probs = {r["patient_id"]: float(r[prob_columns[1]]) for r in rows}
    return RunPredictions(
        source=path,
        classes=classes,
        threshold=0.5,
        labels={r["patient_id"]: r["label"] for r in rows},
        probs=probs,
        scores=dict(zip((r["patient_id"] for r in rows), table_scores(rows, prob_columns[1]))),
        predicted={p: classes[int(v >= 0.5)] for p, v in probs.items()},
    )


def compare(
    run_a: str | Path, run_b: str | Path, split: str = "test", level: float = 0.95, common: bool = False
) -> dict[str, Any]:
    """The paired comparison of two runs' patient predictions on ``split``."""
    if split not in SPLITS:
        raise CompareError(f"--split {split!r} must be one of {list(SPLITS)}")
    if not 0 < level < 1:
        raise CompareError(f"--level {level} must be in (0, 1), e.g. 0.95")
    a, b = load_predictions(Path(run_a), split), load_predictions(Path(run_b), split)
    if a.source.resolve() == b.source.resolve():
        raise CompareError(
            f"A and B are the same predictions ({a.source}): a run compared with itself differs by "
            "nothing; pass two different runs"
        )
    if a.classes != b.classes:
        raise CompareError(f"the runs have different classes: {a.classes} in A, {b.classes} in B")
    if a.cohort and b.cohort and a.cohort != b.cohort:
        # Cohorts reuse ids (every synthetic one names its patients BraTS20_Training_NNN): pairing
        # by id across two cohorts would pair different patients.
        raise CompareError(
            f"A was evaluated on the cohort in {a.cohort} and B on the one in {b.cohort}: the same id "
            "there need not be the same patient; evaluate both on one cohort"
        )
    patients = _shared_patients(a, b, common)
    for p in patients:
        if a.labels[p] != b.labels[p]:
            raise CompareError(
                f"patient {p} is labelled {a.labels[p]} in A and {b.labels[p]} in B: "
                "the runs use different labels"
            )
    classes = a.classes
    for p in patients:
        if a.labels[p] not in classes:
            raise CompareError(f"{a.source}: patient {p} has label {a.labels[p]!r}, not one of {classes}")
    labels = np.array([classes.index(a.labels[p]) for p in patients])
    probs_a = np.array([a.probs[p] for p in patients])
    probs_b = np.array([b.probs[p] for p in patients])
    scores_a = np.array([a.scores[p] for p in patients])
    scores_b = np.array([b.scores[p] for p in patients])
    calls_a = np.array([classes.index(a.predicted[p]) for p in patients])
    calls_b = np.array([classes.index(b.predicted[p]) for p in patients])
    differences = {"auroc": delong_test(labels, scores_a, scores_b, level)}
    differences.update(compare_calls(labels, calls_a, calls_b, level))
    # each run's own figures, called as that run calls them (its threshold); the shown metrics
    # have closed-form intervals, so no bootstrap is drawn
    runs = {}
    for key, run, probs, scores in (("a", a, probs_a, scores_a), ("b", b, probs_b, scores_b)):
        figures = patient_intervals(labels, probs, run.threshold, level, resamples=0, scores=scores)
        runs[key] = {name: figures[name] for name in SHOWN}
    return {
        # an evaluate.py folder given directly knows its split; --split chose the others
        "split": a.split if a.split and a.split == b.split else split,
        "ci_level": level,
        "classes": classes,
        "n_patients": len(patients),
        "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
        "a": {"run": str(run_a), "source": str(a.source), "threshold": a.threshold, "metrics": runs["a"]},
        "b": {"run": str(run_b), "source": str(b.source), "threshold": b.threshold, "metrics": runs["b"]},
        "difference": differences,
    }


def _shared_patients(a: RunPredictions, b: RunPredictions, common: bool) -> list[str]:
    only_a, only_b = sorted(set(a.labels) - set(b.labels)), sorted(set(b.labels) - set(a.labels))
    shared = sorted(set(a.labels) & set(b.labels))
    if not shared:
        raise CompareError(
            f"the runs have no patient in common ({a.source} and {b.source}): compare runs on the same cohort"
        )
    if (only_a or only_b) and not common:
        example = f"e.g. {(only_a or only_b)[0]}"
        raise CompareError(
            f"the runs evaluated different patients ({len(only_a)} only in A, {len(only_b)} only in B, "
            f"{example}): evaluate both on the same cohort and split, or pass --common to compare the "
            f"{len(shared)} shared ones"
        )
    return shared


def format_comparison(result: dict[str, Any]) -> str:
    """A table of both runs' figures and their paired differences."""
    level = int(round(result["ci_level"] * 100))
    counts = ", ".join(f"{k} {v}" for k, v in result["class_counts"].items())
    lines = [
        f"A: {result['a']['run']} ({result['a']['source']}, threshold {result['a']['threshold']:.3f})",
        f"B: {result['b']['run']} ({result['b']['source']}, threshold {result['b']['threshold']:.3f})",
        f"{result['n_patients']} patients of the {result['split']} split ({counts}), paired:",
        f"{'metric':<18} {'A':<24} {'B':<24} {f'A - B [{level}% CI]':<26} {'p':>7}  test",
    ]
    flagged = False
    for name in SHOWN:
        ea, eb, d = result["a"]["metrics"][name], result["b"]["metrics"][name], result["difference"][name]
        flagged |= ea["unreliable"] or eb["unreliable"]
        p = "n/a" if d["p_value"] is None else f"{d['p_value']:.3f}"
        lines.append(
            f"{name:<18} {format_interval(ea):<24} {format_interval(eb):<24} {_difference(d):<26} {p:>7}  "
            f"{d['method'].split(';')[0]}"
        )
        if d.get("note"):
            lines.append(f"  ({name}: {d['note']})")
    if flagged:
        lines.append(UNRELIABLE_NOTE)
    return "\n".join(lines)


def _difference(entry: dict[str, Any]) -> str:
    if entry["difference"] is None:
        return "n/a"
    text = f"{entry['difference']:+.3f}"
    if entry["ci_low"] is not None:
        text += f" [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}]"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gliograde.compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_a", type=Path, help="run directory A (e.g. logs/train/runs/DATE_TIME) or an evaluate.py output folder"
    )
    parser.add_argument("run_b", type=Path, help="run directory B, or an evaluate.py output folder")
    parser.add_argument("--split", default="test", help=f"one of {list(SPLITS)} (default test)")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument(
        "--common",
        action="store_true",
        help="compare on the patients both runs evaluated when the sets differ",
    )
    parser.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.json:
            check_file_target(args.json, "--json")  # before the comparison
        result = compare(args.run_a, args.run_b, args.split, args.level, args.common)
    print(format_comparison(result))
    if args.json:
        advice = "nothing was written: free space or choose another --json file"
        with exit_on_user_error(), output_errors(args.json, f"--json={args.json}", advice):
            write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

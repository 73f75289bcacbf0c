"""What a reader is told first: the headline (patient AUROC and balanced accuracy, the threshold
and where it came from, a warning for a classifier that does not separate the classes), and
report.html saying every line the terminal says, with a per-patient table."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from helpers.pages import Page, check_numbers

from gliograde.evaluation.figures import wrapped
from gliograde.evaluation.plots import reliability_figure, slice_curve_figure
from gliograde.evaluation.report import format_report
from gliograde.evaluation.report_html import evaluation_page, prediction_page
from gliograde.evaluation.scores import score
from gliograde.evaluation.summary import calls_of, run_headline, warnings
from gliograde.inference.runner import format_predictions
from gliograde.training.fit import format_results

CLASSES = ["LGG", "HGG"]


def _predictions(labels: list[int], probs: list[float]):
    """Two slices per patient, both at the patient's probability."""
    from gliograde.evaluation.predict import Predictions

    n = len(labels)
    patient = np.repeat(np.arange(n), 2)
    positive = np.repeat(np.asarray(probs, dtype=float), 2)
    slice_probs = np.stack([1 - positive, positive], axis=1)
    patient_probs = np.stack([1 - np.asarray(probs), np.asarray(probs)], axis=1)
    return Predictions(
        patient_ids=[f"P{p:02d}" for p in patient],
        slice_index=np.tile([3, 4], n),
        labels=np.asarray(labels)[patient],
        probs=slice_probs,
        rows=np.arange(2 * n),
        patients=[f"P{i:02d}" for i in range(n)],
        patient_probs=patient_probs,
        patient_labels=np.asarray(labels),
        slices_per_patient=np.full(n, 2),
        slice_patient=patient,
    )


def evaluation_report(labels: list[int], probs: list[float], threshold: float = 0.5, **extra) -> dict:
    """A metrics.json as evaluate.py writes it (labelled when every label is 0 or 1)."""
    from gliograde.evaluation.tables import patient_frame, patient_rows

    pred = _predictions(labels, probs)
    frame = patient_frame(pred, CLASSES, threshold, {p: "mask" for p in pred.patients})
    report = {
        "run_dir": "logs/train/runs/a-run-directory-with-a-long-name-that-must-not-be-clipped",
        "command": "python evaluate.py",
        "checkpoint": "RUN/checkpoints/epoch_000.ckpt",
        "split": "test",
        "cohort": "COHORT",
        "aggregate": "mean",
        "threshold": threshold,
        "threshold_interval": None,
        "threshold_unreliable": False,
        "threshold_source": f"evaluate.py threshold={threshold:g}",
        "calls": calls_of(frame["prediction"].tolist(), CLASSES),
        "tta": "none",
        "calibration": {"method": "none"},
        "classes": CLASSES,
        "input_contract": {"modalities": ["flair"]},
        "n_patients": len(labels),
        "n_slices": 2 * len(labels),
        "patients": patient_rows(frame),
        **extra,
    }
    if min(labels) >= 0:
        report.update(score(pred, threshold, CLASSES, 0.95, 30, 0, show_progress=False))
    else:
        report["note"] = "the cohort has no labels: predictions only"
    return report


# ------------------------------------------------------------------ the headline's warnings


def test_a_classifier_that_calls_every_patient_one_class_is_flagged():
    (line,) = warnings({"LGG": 0, "HGG": 9}, 0.5, 0.5)
    assert line.startswith("Warning: every one of the 9 patients was called HGG")


def test_a_balanced_accuracy_at_or_below_chance_is_flagged_and_a_useful_one_is_not():
    assert "at or below chance" in warnings({"LGG": 3, "HGG": 6}, 0.357, 0.5)[0]
    assert "at or below chance" in warnings({"LGG": 3, "HGG": 6}, 0.5, 0.5)[0]
    assert warnings({"LGG": 3, "HGG": 6}, 0.8, 0.5) == []


def test_the_evaluation_table_leads_with_auroc_balanced_accuracy_threshold_and_warning():
    # both LGGs called HGG, as in the quick start's first report: AUROC alone looks fine
    report = evaluation_report([0, 0, 1, 1, 1, 1, 1], [0.6, 0.62, 0.65, 0.9, 0.8, 0.75, 0.95])
    lines = format_report(report).splitlines()
    assert lines[0].startswith("Patient AUROC 1.000 [") and ", balanced accuracy 0.500 [" in lines[0]
    assert lines[0].endswith("on 7 test patients (LGG 2, HGG 5)")
    assert lines[1] == (
        "Threshold 0.500 on p(HGG) (a patient is called HGG at or above it): evaluate.py threshold=0.5"
    )
    assert lines[2] == "Called: LGG 0, HGG 7"
    assert lines[3].startswith("Warning: every one of the 7 patients was called HGG")


def test_the_table_names_each_interval_method_and_the_baseline_and_stars_its_small_classes():
    report = evaluation_report([0, 0, 1, 1, 1, 1, 1], [0.2, 0.7, 0.65, 0.9, 0.3, 0.75, 0.95])
    text = format_report(report)
    auroc = next(line for line in text.splitlines() if line.startswith("auroc "))
    assert "delong" in auroc.split() or "newcombe-score" in auroc.split()
    assert "wilson" in next(line for line in text.splitlines() if line.startswith("accuracy ")).split()
    assert "95% intervals, Wilson score interval: patient accuracy, patient sensitivity" in text
    assert "percentile bootstrap over patients (a patient's slices resampled together), 30 resamples" in text
    assert "Majority-class baseline: calling every patient HGG scores accuracy 0.714" in text
    assert "]*" in text and "* fewer than 10 patients in a class" in text


# ------------------------------------------------------------------ train.py's closing summary


def _run_tables(folder, val: tuple[list[str], list[float]], test: tuple[list[str], list[float]]) -> None:
    for split, (labels, probs) in (("val", val), ("test", test)):
        p = np.asarray(probs)
        pd.DataFrame(
            {
                "patient_id": [f"{split}{i}" for i in range(len(p))],
                "label": labels,
                "prob_LGG": 1 - p,
                "prob_HGG": p,
                "score": np.log(p) - np.log1p(-p),
            }
        ).to_csv(folder / f"predictions_{split}.csv", index=False)


def test_train_ends_on_auroc_balanced_accuracy_the_threshold_and_a_warning(tmp_path):
    # a model whose probabilities all sit above 0.5: it ranks the test patients but calls them all HGG
    _run_tables(
        tmp_path,
        (["LGG", "LGG", "HGG", "HGG"], [0.62, 0.66, 0.8, 0.9]),
        (["LGG", "LGG", "HGG", "HGG", "HGG"], [0.6, 0.64, 0.75, 0.85, 0.95]),
    )
    metrics = {"test/patient_auroc": 1.0, "test/patient_balanced_accuracy": 0.5, "test/patient_count": 5.0}
    lines = format_results(metrics, tmp_path).splitlines()
    assert lines[1] == "Patient-level test metrics:"
    assert lines[2] == "  Patient AUROC 1.000, balanced accuracy 0.500 on 5 test patients (LGG 2, HGG 3)"
    assert lines[3].startswith("  Threshold 0.500 on p(HGG)") and lines[3].endswith(
        "train.py threshold=0.5, not chosen on the validation patients"
    )
    assert lines[4] == "  Called: LGG 0, HGG 5"
    assert lines[5].startswith("  Warning: every one of the 5 patients was called HGG")

    # threshold=youden: chosen on the validation patients, it separates the test patients
    lines = format_results(metrics, tmp_path, threshold="youden").splitlines()
    assert lines[2] == "  Patient AUROC 1.000, balanced accuracy 1.000 on 5 test patients (LGG 2, HGG 3)"
    assert lines[3].startswith("  Threshold 0.730 on p(HGG)")
    assert "the middle of (0.660, 0.800], where sensitivity + specificity is best on the 4 validation" in (
        lines[3]
    )
    assert lines[4] == "  Called: LGG 2, HGG 3" and not any("Warning" in line for line in lines)
    rows = {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("  test/")}
    assert rows["test/patient_balanced_accuracy"] == 1.0 and rows["test/patient_count"] == 5.0
    assert "metrics.json holds these figures at threshold 0.5" in lines[-2]


def test_a_youden_threshold_without_both_classes_in_validation_says_so(tmp_path):
    _run_tables(tmp_path, (["HGG", "HGG"], [0.7, 0.8]), (["LGG", "HGG"], [0.3, 0.9]))
    head, at = run_headline(tmp_path, "youden")
    assert at["threshold"] == 0.5 and "needs both classes among the validation patients" in head[1]


def test_train_takes_a_threshold_or_youden_and_refuses_anything_else():
    from helpers.configs import compose_config

    from gliograde.errors import GliogradeError
    from gliograde.config.schema import validate_config

    assert compose_config("train", ["paths.output_dir=/tmp"]).threshold == 0.5
    validate_config(compose_config("train", ["threshold=youden", "paths.output_dir=/tmp"]), "train")
    with pytest.raises(GliogradeError, match="threshold"):
        validate_config(compose_config("train", ["threshold=1.5", "paths.output_dir=/tmp"]), "train")


# ------------------------------------------------------------------ report.html says what the terminal says


def _printed_lines(text: str) -> list[str]:
    """The printed lines that are sentences (not the metrics table's rows)."""
    return [line.strip() for line in text.splitlines() if line.strip() and "  " not in line.strip()]


@pytest.mark.parametrize("labelled", [True, False])
def test_the_evaluation_page_says_every_line_the_terminal_says(labelled):
    labels = [0, 0, 1, 1, 1, 1, 1] if labelled else [-1] * 7
    report = evaluation_report(
        labels,
        [0.2, 0.7, 0.65, 0.9, 0.3, 0.75, 0.95],
        identity_notes=["1 patient(s) share their id with a training patient of the run but not its images"],
        mask_free_note="2 patient(s) graded by the brain rule without a tumour mask",
    )
    page = Page(evaluation_page(report, []))
    printed = _printed_lines(format_report(report))
    for line in printed:
        if not line.startswith("metric "):
            assert line in page.paragraphs, line
    collision = "1 patient(s) share their id with a training patient of the run but not its images"
    assert f"Warning: {collision}" in printed
    check_numbers(page, report)
    assert len(page.headings) == len(set(page.headings))
    # the per-patient table: id, label when known, probability, prediction, slices, slice rule
    patients = next(t for t in page.tables if t[0][0] == "patient")
    label = ["label"] if labelled else []
    assert patients[0] == ["patient", *label, "p(HGG)", "prediction", "slices", "slice rule"]
    assert [row[0] for row in patients[1:]] == [f"P{i:02d}" for i in range(7)]
    assert patients[2][-3:] == ["HGG", "2", "mask"]
    if labelled:
        metrics = next(t for t in page.tables if t[0][0] == "metric")
        assert metrics[0] == ["metric", "patient", "95% CI", "interval", "slice", "95% CI"]
        auroc = next(row for row in metrics if row[0] == "auroc")
        assert auroc[2] in format_report(report) and auroc[3] == report["patient"]["auroc"]["ci_method"]


def test_a_calibrated_evaluation_page_says_the_temperature_and_its_scores():
    calibration = {
        "method": "temperature", "temperature": 1.7, "file": "RUN/calibration.json", "val_patients": 4,
        "unreliable": True, "note": "the temperature was fitted on 4 of these 7 patients",
        "patient": {"ece": {"before": 0.3, "after": 0.1}},
    }
    probs = [0.2, 0.7, 0.65, 0.9, 0.3, 0.75, 0.95]
    report = evaluation_report([0, 0, 1, 1, 1, 1, 1], probs, calibration=calibration)
    text = format_report(report)
    page = Page(evaluation_page(report, []))
    for line in ("Calibration: temperature scaling, T=1.7000*, fitted on 4 validation patients",
                 "Note: the temperature was fitted on 4 of these 7 patients",
                 "Calibration: the metrics and tables use the calibrated probabilities (T is stored in "
                 "RUN/calibration.json)",
                 "Calibration, patient ece: 0.300 before, 0.100 after"):
        assert line in text.splitlines() and line in page.paragraphs


def _prediction_report() -> dict:
    rows = [
        {
            "patient_id": pid, "probabilities": {"LGG": 1 - p, "HGG": p},
            "prediction": "HGG" if p >= 0.4 else "LGG",
            "n_slices": 6, "slice_rule": "mask", "tumour_ml": 12.5, "predicted_mask": None, "resampled": None,
            "slice_index": [1, 2], "files": {"flair": "x"}, "fingerprints": {}, "figures": {}, "qc": qc,
            "training_patient": trained,
        }
        for pid, p, qc, trained in (("A1", 0.61, "ok", None), ("B2", 0.2, "check registration", "T9"))
    ]
    return {
        "model": "logs/train/runs/X/checkpoints/epoch_004.ckpt", "model_kind": "checkpoint", "threshold": 0.4,
        "tta": "none",
        "calibration": {"method": "temperature", "temperature": 1.3, "source": "RUN/recipe.json"},
        "recipe": {"source": "RUN/recipe.json, from evaluate.py threshold=youden on 15 validation patients"},
        "classes": CLASSES, "input_contract": {"modalities": ["flair"]}, "mask_free": None, "patients": rows,
    }


def test_the_prediction_page_says_every_line_the_terminal_says_and_shows_every_column():
    report = _prediction_report()
    page = Page(prediction_page(report, folder=None))
    printed = format_predictions(report).splitlines()
    assert printed[1] == (
        "Threshold 0.400 on p(HGG) (a patient is called HGG at or above it): "
        "RUN/recipe.json, from evaluate.py threshold=youden on 15 validation patients"
    )
    for line in printed:
        if not line.startswith("  "):  # the per-patient lines are the table
            assert line in page.paragraphs, line
    trained = "patient B2 is the model's training patient T9: its prediction is not an honest estimate"
    assert f"Warning: {trained}" in printed
    check_numbers(page, report)
    assert len(page.headings) == len(set(page.headings)) and page.headings.count("Patients") == 1
    (table,) = page.tables
    assert table[0] == [
        "patient", "p(LGG)", "p(HGG)", "prediction", "slices", "slice rule", "tumour ml", "qc",
        "training patient",
    ]
    assert table[2] == ["B2", "0.800", "0.200", "LGG", "6", "mask", "12.500", "check registration", "T9"]


# ------------------------------------------------------------------ figures a reader can read


def _inside(figure, artist) -> bool:
    figure.canvas.draw()
    box = artist.get_window_extent(figure.canvas.get_renderer())
    frame = figure.bbox
    return box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1 and box.y1 <= frame.y1 + 1


def test_a_long_title_wraps_inside_its_figure():
    import matplotlib.pyplot as plt

    title = (
        "BraTS20_Training_0001 with a long name: slice rule tumor_topk, 12 slices of 155 in the axial plane"
    )
    figure = slice_curve_figure(np.arange(5), np.full((5, 2), 0.5), CLASSES, 0.5, title)
    try:
        assert _inside(figure, figure.axes[0].title)
        assert "\n" in figure.axes[0].get_title()
    finally:
        plt.close(figure)
    assert wrapped("short", 3.6) == "short"


def test_the_reliability_plot_keeps_its_points_off_the_frame_and_labels_apart():
    import matplotlib.pyplot as plt

    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    probs = np.array([0.02, 0.04, 0.15, 0.55, 0.62, 0.95, 0.97, 0.99])
    figure = reliability_figure(labels, probs)
    try:
        ax = figure.axes[0]
        low, high = ax.get_ylim()
        assert low < 0 and high > 1 and ax.get_xlim()[0] < 0 and ax.get_xlim()[1] > 1
        texts = [t for t in ax.texts if re.fullmatch(r"n=\d+", t.get_text())]
        assert sorted(int(t.get_text()[2:]) for t in texts) == sorted([2, 1, 1, 1, 3])
        figure.canvas.draw()
        boxes = [t.get_window_extent(figure.canvas.get_renderer()) for t in texts]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
        assert all(_inside(figure, t) for t in texts)
    finally:
        plt.close(figure)

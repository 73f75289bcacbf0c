"""evaluate.py: metrics against hand computation, intervals, aggregation, and the whole report
on a trained run, on a leak attempt, and on a cohort without labels or masks."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.commands import run_python

from gliograde.data.synthetic.generator import generate_cohort
from gliograde.evaluation.metrics import binary_metrics, bootstrap_intervals, youden_interval, youden_threshold
from gliograde.models.patient_scores import patient_log_probs


# ----------------------------------------------------------------------------- unit
def test_metrics_match_a_hand_computed_case():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    probs = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.4])  # TP=2 FN=1 FP=1 TN=3
    m = binary_metrics(labels, probs, 0.5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["ppv"] == pytest.approx(2 / 3)
    assert m["npv"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["mcc"] == pytest.approx((2 * 3 - 1 * 1) / np.sqrt(3 * 3 * 4 * 4))
    assert m["auroc"] == pytest.approx(10 / 12)
    assert m["brier"] == pytest.approx(np.mean((probs - labels) ** 2))
    # calibration: all in one bin; predicted 0.95 but right half the time -> 0.45; 0.75 and right 3/4 -> 0
    assert binary_metrics(np.array([1, 1, 0, 0]), np.full(4, 0.95))["ece"] == pytest.approx(0.45)
    assert binary_metrics(np.array([1, 1, 1, 0]), np.array([0.72, 0.74, 0.76, 0.78]))["ece"] == pytest.approx(
        0.0
    )
    # precision at each positive: 1, 1, 3/5 -> average precision
    assert m["auprc"] == pytest.approx((1 + 1 + 3 / 5) / 3)


def test_metrics_agree_with_scikit_learn_on_random_cases():
    from sklearn.metrics import (
        balanced_accuracy_score,
        f1_score,
        matthews_corrcoef,
        precision_score,
        recall_score,
    )

    rng = np.random.default_rng(4)
    for _ in range(20):
        labels = rng.integers(0, 2, 40)
        probs = rng.random(40)
        predicted = (probs >= 0.5).astype(int)
        m = binary_metrics(labels, probs, 0.5)
        assert m["sensitivity"] == pytest.approx(recall_score(labels, predicted))
        assert m["specificity"] == pytest.approx(recall_score(labels, predicted, pos_label=0))
        assert m["ppv"] == pytest.approx(precision_score(labels, predicted))
        assert m["npv"] == pytest.approx(precision_score(labels, predicted, pos_label=0))
        assert m["f1"] == pytest.approx(f1_score(labels, predicted))
        assert m["mcc"] == pytest.approx(matthews_corrcoef(labels, predicted))
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))


def test_undefined_metrics_are_nan_not_zero():
    m = binary_metrics(np.array([1, 1]), np.array([0.2, 0.3]), 0.5)
    assert np.isnan(m["auroc"]) and np.isnan(m["ppv"]) and m["sensitivity"] == 0


def _intervals(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probs = np.clip(labels * 0.3 + rng.random(n) * 0.7, 0, 1)
    return bootstrap_intervals(lambda i: binary_metrics(labels[i], probs[i]), n, resamples=300, seed=1)


def test_intervals_contain_the_value_and_shrink_with_more_patients():
    small, large = _intervals(30), _intervals(600)
    for name in ("accuracy", "auroc", "sensitivity", "brier"):
        for result in (small, large):
            assert result[name]["ci_low"] <= result[name]["value"] <= result[name]["ci_high"]
        width = lambda r: r[name]["ci_high"] - r[name]["ci_low"]  # noqa: E731
        assert width(large) < width(small) / 2


def aggregate(patient, probs, method, weights=None):
    """Patient probabilities of slice probabilities, by the aggregate every command uses."""
    ids, log_probs, counts = patient_log_probs(patient, np.log(probs), method, weights)
    return ids, np.exp(log_probs), counts


def test_aggregation_methods():
    patient = np.array([5, 5, 5, 2])
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1]])
    ids, mean, counts = aggregate(patient, probs, "mean")
    assert ids.tolist() == [2, 5] and counts.tolist() == [1, 3]
    assert mean[1, 1] == pytest.approx((0.8 + 0.4 + 0.7) / 3)
    _, vote, _ = aggregate(patient, probs, "vote")
    assert vote[1, 1] == pytest.approx(2 / 3) and vote[0, 1] == 0
    _, weighted, _ = aggregate(patient, probs, "tumor_weighted", np.array([3, 1, 0, 0]))
    assert weighted[1, 1] == pytest.approx((3 * 0.8 + 0.4) / 4)
    assert weighted[0, 1] == pytest.approx(0.1)  # no tumour anywhere: plain mean


def test_youden_threshold_separates_perfectly_separable_patients():
    t = youden_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.6, 0.9]))
    assert t == pytest.approx(0.45)  # the middle of (0.3, 0.6]


def test_youden_threshold_on_saturated_probabilities_is_the_middle_of_the_gap():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.0001, 0.0003, 0.002, 0.9991, 0.9995, 0.99999, 1.0])
    assert youden_interval(labels, probs) == (0.002, 0.9991)
    assert youden_threshold(labels, probs) == pytest.approx((0.002 + 0.9991) / 2)
    # an overlap: the best cut lies between 0.4 and 0.55, whichever the interval's middle
    labels, probs = np.array([0, 0, 1, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4, 0.55, 0.8])
    assert youden_interval(labels, probs) == (0.4, 0.55)


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Iterator[dict[str, Path]]:
    base = tmp_path_factory.mktemp("evaluate")
    cohort = base / "cohort"
    generate_cohort(cohort, patients=32, seed=5, shape=(48, 48, 24), lgg_fraction=0.5, compress=False)
    run = base / "run"
    result = run_python(
        "train.py",
        "data=brats2020",
        f"data.root={cohort}",
        f"data.cache_dir={base / 'cache'}",
        "data.slices.k=5",
        "data.batch_size=16",
        "data.progress=false",
        "data.split.train=0.5",
        "data.split.val=0.25",
        "data.split.test=0.25",
        "trainer=cpu",
        "trainer.max_epochs=3",
        "callbacks.progress_bar.refresh_rate=0",
        "callbacks.last_checkpoint=null",  # never resumed: one checkpoint is enough
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    yield {"cohort": cohort, "run": run, "cache": base / "cache"}
    shutil.rmtree(base, ignore_errors=True)


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return run_python("evaluate.py", "bootstrap=100", "gradcam_n=1", *args)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_report_files_exist_and_agree(trained_run):
    run = trained_run["run"]
    result = _evaluate(f"run_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    out = run / "eval" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    patients = _rows(out / "patient_predictions.csv")
    slices = _rows(out / "slice_predictions.csv")
    test_ids = {r["patient_id"] for r in _rows(run / "splits.csv") if r["split"] == "test"}
    assert {r["patient_id"] for r in patients} == {r["patient_id"] for r in slices} == test_ids
    assert metrics["n_patients"] == len(patients) == 8 and metrics["n_slices"] == len(slices)
    assert sum(int(r["n_slices"]) for r in patients) == len(slices)
    for row in slices:
        p = float(row["prob_LGG"]), float(row["prob_HGG"])
        assert all(0 <= v <= 1 for v in p) and sum(p) == pytest.approx(1, abs=1e-5)
    for row in patients:  # soft voting: the mean of the patient's slice probabilities
        mine = [float(s["prob_HGG"]) for s in slices if s["patient_id"] == row["patient_id"]]
        assert float(row["probability"]) == pytest.approx(np.mean(mine), abs=1e-5)
        assert row["prediction"] == ("HGG" if float(row["probability"]) >= 0.5 else "LGG")
    for level in ("patient", "slice"):
        for name, entry in metrics[level].items():
            if entry["value"] is not None and entry["ci_low"] is not None:
                assert entry["ci_low"] - 1e-9 <= entry["value"] <= entry["ci_high"] + 1e-9, (level, name)
    assert metrics["class_counts"] == {"LGG": 4, "HGG": 4}
    assert metrics["majority_baseline"]["accuracy"] == 0.5
    for name in ("confusion_matrix", "roc", "reliability", "probability_strip"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert list(out.glob("gradcam_*.png"))
    assert "auroc" in result.stdout and "[95% CI]" in result.stdout
    # training tested the same best checkpoint on the same patients: the same numbers
    trained = json.loads((run / "metrics.json").read_text())
    for name in ("auroc", "accuracy", "balanced_accuracy", "sensitivity", "specificity"):
        expected = metrics["patient"][name]["value"]
        assert trained[f"test/patient_{name}"] == pytest.approx(expected, abs=1e-9), name
    by_id = {r["patient_id"]: r for r in _rows(run / "predictions_test.csv")}
    for row in patients:
        mine = by_id[row["patient_id"]]
        assert float(mine["prob_HGG"]) == pytest.approx(float(row["probability"]), abs=1e-6)
        assert float(mine["score"]) == pytest.approx(float(row["score"]), abs=1e-4)


@pytest.mark.slow
def test_youden_threshold_comes_from_the_val_split(trained_run, tmp_path):
    run = trained_run["run"]
    val = _evaluate(f"run_dir={run}", "split=val", f"output_dir={tmp_path / 'val'}", "gradcam_n=0")
    assert val.returncode == 0, val.stderr[-3000:]
    rows = _rows(tmp_path / "val" / "patient_predictions.csv")
    expected = youden_threshold(
        np.array([r["label"] == "HGG" for r in rows], dtype=int),
        np.array([float(r["probability"]) for r in rows]),
    )
    test = _evaluate(f"run_dir={run}", "threshold=youden", f"output_dir={tmp_path / 'test'}", "gradcam_n=0")
    assert test.returncode == 0, test.stderr[-3000:]
    report = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert report["threshold"] == pytest.approx(expected, abs=1e-5)
    # chosen on 8 validation patients (4 per class): starred like an interval on so few
    assert report["threshold_unreliable"] is True
    assert f"Threshold {report['threshold']:.3f}* on p(HGG)" in test.stdout
    assert "fewer than 10 patients" in test.stdout


@pytest.mark.slow
def test_training_patients_are_refused_unless_allowed(trained_run, tmp_path):
    run = trained_run["run"]
    refused = _evaluate(f"run_dir={run}", "split=train", f"output_dir={tmp_path / 'a'}")
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert "training split" in line and "allow_leak=true" in line
    assert not (tmp_path / "a" / "metrics.json").exists()
    allowed = _evaluate(
        f"run_dir={run}", "split=train", "allow_leak=true", f"output_dir={tmp_path / 'b'}", "gradcam_n=0"
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]


@pytest.mark.slow
def test_cohort_without_labels_or_masks_gets_predictions_only(trained_run, tmp_path):
    """Like the BraTS 2020 validation download: other folder names, no masks, no Grade column."""
    # Patients of their own: renamed copies of the run's patients would be refused as a leak.
    source, other = tmp_path / "fresh", tmp_path / "validation"
    generate_cohort(source, patients=5, seed=55, shape=(48, 48, 24), lgg_fraction=0.4, compress=False)
    for i, folder in enumerate(sorted(p for p in source.iterdir() if p.is_dir())[:5]):
        new_id = f"BraTS20_Validation_{i + 1:03d}"
        (other / new_id).mkdir(parents=True)
        for modality in ("flair", "t1", "t1ce", "t2"):
            shutil.copy(folder / f"{folder.name}_{modality}.nii", other / new_id / f"{new_id}_{modality}.nii")
    (other / "name_mapping_validation_data.csv").write_text(
        "BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,BraTS_2019_subject_ID,BraTS_2020_subject_ID\n"
        + "".join(f"NA,NA,NA,NA,BraTS20_Validation_{i + 1:03d}\n" for i in range(5))
    )
    out = tmp_path / "out"
    result = _evaluate(
        f"run_dir={trained_run['run']}",
        f"data.root={other}",
        "data.labels.file=name_mapping_validation_data.csv",
        f"data.cache_dir={trained_run['cache']}",
        "split=all",
        f"output_dir={out}",
        "mask_free=brain",  # the model chose tumour slices: grading by the brain rule is asked for
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5 patient(s) graded by the brain rule without a tumour mask" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_patients"] == 5 and "patient" not in metrics and "predictions only" in metrics["note"]
    rows = _rows(out / "patient_predictions.csv")
    assert len(rows) == 5 and all(r["label"] == "" and r["prediction"] in ("LGG", "HGG") for r in rows)
    assert {r["slice_rule"] for r in rows} == {"brain"}
    assert list(out.glob("gradcam_all_*.png"))


@pytest.mark.slow
def test_best_checkpoint_is_found_in_the_run_directory_itself(trained_run, tmp_path):
    """A copied run without metrics.json (killed, or still running) still evaluates its best."""
    copy = tmp_path / "copy"
    shutil.copytree(trained_run["run"], copy, ignore=shutil.ignore_patterns("eval", "metrics.json"))
    result = _evaluate(f"run_dir={copy}", "gradcam_n=0", f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    used = Path(json.loads((tmp_path / "out" / "metrics.json").read_text())["checkpoint"])
    assert used.parent == copy / "checkpoints" and used.name.startswith("epoch_")

"""python -m gliograde.compare: paired tests on two runs' patient predictions, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.commands import run_python
from scipy.stats import norm

from gliograde.compare import CompareError, compare, main

CLASSES = ("LGG", "HGG")
# the hand-computed DeLong case of test_intervals: AUROC 5/6 vs 1/3, z = 1.5
PATIENTS = ["P1", "P2", "P3", "P4", "P5"]
LABELS = ["HGG", "HGG", "HGG", "LGG", "LGG"]
PROBS_A = [0.9, 0.8, 0.4, 0.7, 0.3]
PROBS_B = [0.6, 0.2, 0.45, 0.7, 0.3]


def _trained_run(root: Path, probs, patients=PATIENTS, labels=LABELS, split="test") -> Path:
    root.mkdir(parents=True)
    lines = ["patient_id,label,prob_LGG,prob_HGG"]
    lines += [f"{p},{y},{1 - q:.6f},{q:.6f}" for p, y, q in zip(patients, labels, probs)]
    (root / f"predictions_{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def _evaluated_run(root: Path, probs, threshold: float) -> Path:
    out = root / "eval" / "test"
    out.mkdir(parents=True)
    lines = ["patient_id,label,probability,prediction,n_slices"]
    lines += [
        f"{p},{y},{q:.6f},{CLASSES[int(q >= threshold)]},5" for p, y, q in zip(PATIENTS, LABELS, probs)
    ]
    (out / "patient_predictions.csv").write_text("\n".join(lines) + "\n")
    (out / "metrics.json").write_text(json.dumps({"classes": list(CLASSES), "threshold": threshold}))
    return root


@pytest.mark.slow
def test_compare_reports_delong_and_mcnemar_on_the_shared_patients(tmp_path):
    a = _trained_run(tmp_path / "a", PROBS_A)
    b = _trained_run(tmp_path / "b", PROBS_B)
    result = run_python("-m", "gliograde.compare", str(a), str(b), "--json", str(tmp_path / "c.json"))
    assert result.returncode == 0, result.stderr
    assert "DeLong" in result.stdout and "McNemar" in result.stdout and "unreliable" in result.stdout
    data = json.loads((tmp_path / "c.json").read_text())
    auc = data["difference"]["auroc"]
    assert auc["difference"] == pytest.approx(0.5) and auc["p_value"] == pytest.approx(2 * norm.sf(1.5))
    # calls at 0.5: A right on P1 P2 P5 (P3 0.4 missed, P4 0.7 false alarm); B right on P1 P5
    acc = data["difference"]["accuracy"]
    assert acc["a"] == pytest.approx(3 / 5) and acc["b"] == pytest.approx(2 / 5)
    assert acc["discordant"] == {"a_right_b_wrong": 1, "a_wrong_b_right": 0} and acc["p_value"] == 1.0
    assert data["a"]["metrics"]["auroc"]["unreliable"] and data["n_patients"] == 5
    assert data["class_counts"] == {"LGG": 2, "HGG": 3}


def test_evaluate_outputs_are_preferred_with_their_threshold(tmp_path):
    a = _evaluated_run(_trained_run(tmp_path / "a", [0.0] * 5), PROBS_A, threshold=0.35)
    b = _trained_run(tmp_path / "b", PROBS_B)
    data = compare(a, b)
    assert data["a"]["threshold"] == 0.35 and data["a"]["source"].endswith("patient_predictions.csv")
    assert data["difference"]["auroc"]["auroc_a"] == pytest.approx(5 / 6)
    # at 0.35 A calls P3 (0.4) right and P4 (0.7) wrong and P5 (0.3) right: 4 of 5
    assert data["difference"]["accuracy"]["a"] == pytest.approx(4 / 5)


def test_evaluate_output_folders_compare_directly(tmp_path):
    """An external cohort's evaluation lands in e.g. RUN/eval/all_data-<hash>: compare takes it."""
    a = _evaluated_run(tmp_path / "a", PROBS_A, threshold=0.5) / "eval" / "test"
    b = _evaluated_run(tmp_path / "b", PROBS_B, threshold=0.5) / "eval" / "test"
    for folder in (a, b):
        report = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**report, "split": "all"}))
    data = compare(a, b, split="val")  # the folders decide; split is not looked at
    assert data["a"]["source"] == str(a / "patient_predictions.csv") and data["split"] == "all"
    assert data["difference"]["auroc"]["difference"] == pytest.approx(0.5)


def test_evaluations_of_two_cohorts_are_refused_even_with_the_same_ids_and_labels(tmp_path, capsys):
    """Two synthetic cohorts with one seed share ids and grades but not patients."""
    folders = []
    for name, cohort in (("a", "/data/fresh_0.1"), ("b", "/data/fresh_0.2")):
        folder = _evaluated_run(tmp_path / name, PROBS_A, threshold=0.5) / "eval" / "test"
        report = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**report, "cohort": cohort}))
        folders.append(folder)
    code, err = _exit_code(capsys, *map(str, folders), "--common")
    assert code == 2 and err.count("\n") == 1
    assert "A was evaluated on the cohort in /data/fresh_0.1 and B on the one in /data/fresh_0.2" in err


def _exit_code(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    return stop.value.code, capsys.readouterr().err


def test_refuses_different_patients_unless_common(tmp_path, capsys):
    a = _trained_run(tmp_path / "a", PROBS_A)
    b = _trained_run(tmp_path / "b", PROBS_B[:4], PATIENTS[:4], LABELS[:4])
    code, err = _exit_code(capsys, str(a), str(b))
    assert code == 2 and err.count("\n") == 1 and "1 only in A" in err and "--common" in err
    assert compare(a, b, common=True)["n_patients"] == 4


def test_refuses_different_labels_classes_and_missing_files(tmp_path, capsys):
    a = _trained_run(tmp_path / "a", PROBS_A)
    flipped = _trained_run(tmp_path / "b", PROBS_B, labels=["LGG", *LABELS[1:]])
    with pytest.raises(CompareError, match="patient P1 is labelled HGG in A and LGG in B"):
        compare(a, flipped)
    with pytest.raises(CompareError, match="no patient predictions for split=val"):
        compare(a, flipped, split="val")
    other = _trained_run(tmp_path / "c", PROBS_B, [f"Q{i}" for i in range(5)])
    with pytest.raises(CompareError, match="no patient in common"):
        compare(a, other, common=True)
    code, err = _exit_code(capsys, str(a), str(tmp_path / "missing"))
    assert code == 2 and "evaluate.py run_dir=" in err


def test_a_run_compared_with_itself_is_refused_in_one_line(tmp_path, capsys):
    a = _trained_run(tmp_path / "a", PROBS_A)
    (tmp_path / "link").symlink_to(a)
    for other in (a, tmp_path / "." / "a", tmp_path / "link"):
        code, err = _exit_code(capsys, str(a), str(other))
        assert code == 2 and err.count("\n") == 1 and "the same predictions" in err
    # a run and its own evaluate.py folder, given directly, are still the same predictions
    evaluated = _evaluated_run(tmp_path / "b", PROBS_A, threshold=0.5)
    with pytest.raises(CompareError, match="the same predictions"):
        compare(evaluated, evaluated / "eval" / "test")

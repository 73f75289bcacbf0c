"""One patient score everywhere: training, evaluate.py, the prediction tables and compare give the
same numbers for the same patients, even where float32 probabilities saturate."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import softmax
from sklearn.metrics import roc_auc_score

from gliograde.files.atomic import write_frame
from gliograde.compare import compare
from gliograde.evaluation.intervals import patient_intervals
from gliograde.evaluation.metrics import binary_metrics
from gliograde.evaluation.predict import Predictions, from_logits
from gliograde.evaluation.tables import patient_frame
from gliograde.models.patient_metrics import PatientProbabilities, classification_metrics
from gliograde.models.patient_scores import patient_scores, probability_score, slice_log_probs, table_scores
from gliograde.files.tables import read_table

# Five patients of two slices each, every slice so sure of HGG that float32 softmax gives exactly
# 1.0; the model still ranks them: logit differences (HGG - LGG) per patient below.
DIFFERENCES = {
    "p0": (18.0, 19.0),
    "p1": (21.0, 22.0),
    "p2": (24.0, 23.0),
    "p3": (20.0, 20.5),
    "p4": (26.0, 25.0),
}
LABELS = {"p0": 0, "p1": 1, "p2": 1, "p3": 0, "p4": 1}


def _saturated() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(slice patient positions, slice indices, slice logits [N, 2], patient labels)``."""
    patient, index, logits = [], [], []
    for position, name in enumerate(DIFFERENCES):
        for i, diff in enumerate(DIFFERENCES[name]):
            patient.append(position)
            index.append(i)
            logits.append([-diff / 2, diff / 2])
    labels = np.array([LABELS[name] for name in DIFFERENCES])
    return np.array(patient), np.array(index), np.array(logits, dtype=np.float32), labels


def test_the_case_saturates_float32_softmax():
    _, _, logits, _ = _saturated()
    float32 = torch.from_numpy(logits).softmax(dim=1)
    assert bool((float32[:, 1] == 1.0).all())  # the old computation tied every patient
    labels = np.repeat(_saturated()[3], 2)
    assert roc_auc_score(labels, float32[:, 1].numpy()) == 0.5


@pytest.mark.parametrize("scale", [1.0, 3.0])  # 3: even float64 probabilities are exactly 1.0
def test_training_and_evaluate_give_the_same_auroc_on_saturated_logits(scale):
    patient, index, logits, labels = _saturated()
    logits = logits * np.float32(scale)
    # training: the LightningModule's collector and metric function
    collected = PatientProbabilities()
    slice_labels = torch.from_numpy(np.repeat(labels, 2))
    collected.update(torch.from_numpy(logits), slice_labels, torch.from_numpy(patient), torch.from_numpy(index))
    rows = collected.rows()
    trained = classification_metrics(
        rows["probs"], rows["label"], prefix="test/patient_", scores=rows["score"]
    )
    # evaluate.py: predictions from the same logits, then its metric suite with intervals
    pred = _predictions(patient, logits, labels)
    evaluated = patient_intervals(
        pred.patient_labels, pred.patient_probs[:, 1], resamples=20, scores=pred.patient_scores
    )
    # the model ranks p1 (21, 22), p2 (24, 23) and p4 (26, 25) above p0 (18, 19) and p3 (20, 20.5)
    assert trained["test/patient_auroc"].item() == evaluated["auroc"]["value"] == 1.0
    assert binary_metrics(labels, pred.patient_probs[:, 1], scores=pred.patient_scores)["auroc"] == 1.0
    # the same probabilities too, in float64
    np.testing.assert_array_equal(rows["probs"].numpy(), pred.patient_probs)
    np.testing.assert_array_equal(rows["score"].numpy(), pred.patient_scores)
    for name in ("accuracy", "sensitivity", "specificity", "f1", "balanced_accuracy"):
        assert trained[f"test/patient_{name}"].item() == evaluated[name]["value"], name


def test_the_tables_and_compare_rank_by_the_stored_score(tmp_path):
    patient, _, logits, labels = _saturated()
    pred = _predictions(patient, logits * 3, labels)  # beyond what float64 probabilities resolve
    folders = {"a": pred, "b": _predictions(patient, logits / 20, labels)}  # B: the same model, unsure
    for name, p in folders.items():
        (tmp_path / name).mkdir()
        write_frame(tmp_path / name / "patient_predictions.csv", patient_frame(p, ["LGG", "HGG"], 0.5))
        report = {"classes": ["LGG", "HGG"], "threshold": 0.5, "split": "test", "cohort": "/cohort"}
        (tmp_path / name / "metrics.json").write_text(json.dumps(report))
    table = read_table(tmp_path / "a" / "patient_predictions.csv")
    assert (table["probability"].astype(float) == 1.0).all()  # the probabilities alone tie
    scores = table_scores(table.to_dict("records"), "probability")
    np.testing.assert_allclose(scores, pred.patient_scores, rtol=1e-15)
    result = compare(tmp_path / "a", tmp_path / "b")
    assert result["a"]["metrics"]["auroc"]["value"] == 1.0
    assert result["difference"]["auroc"]["auroc_a"] == 1.0
    expected_b = roc_auc_score(labels, folders["b"].patient_scores)
    assert result["difference"]["auroc"]["auroc_b"] == pytest.approx(expected_b)


def test_a_table_without_scores_falls_back_to_the_log_odds_of_its_probability():
    rows = [
        {"probability": "0.25"},
        {"probability": "1.0", "score": ""},
        {"probability": "0.5", "score": "3.5"},
    ]
    expected = [np.log(1 / 3), 1e300, 3.5]
    assert table_scores(rows, "probability").tolist() == pytest.approx(expected)
    assert probability_score(0.0) == -1e300


def test_views_temperature_and_aggregates_match_a_direct_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(7, 2, 2))  # 7 slices, 2 test-time views
    patient = np.array([0, 0, 0, 1, 1, 2, 2])
    direct = softmax(logits / 1.7, axis=-1).mean(axis=1)
    np.testing.assert_allclose(np.exp(slice_log_probs(logits, 1.7)), direct, rtol=1e-12)
    out = patient_scores(patient, logits, temperature=1.7)
    means = np.stack([direct[patient == p].mean(axis=0) for p in range(3)])
    np.testing.assert_allclose(out["probs"], means, rtol=1e-12)
    np.testing.assert_allclose(out["score"], np.log(means[:, 1] / means[:, 0]), rtol=1e-10)
    weights = np.array([0, 2.0, 1.0, 0, 0, 1.0, 3.0])  # patient 1 has no tumour: a plain mean
    weighted = patient_scores(patient, logits, "tumor_weighted", weights, 1.7)["probs"]
    expected = [
        np.average(direct[:3], axis=0, weights=weights[:3]),
        means[1],
        np.average(direct[5:], axis=0, weights=weights[5:]),
    ]
    np.testing.assert_allclose(weighted, np.stack(expected), rtol=1e-12)
    votes = patient_scores(patient, logits, "vote", temperature=1.7)
    shares = np.stack(
        [np.bincount(direct[patient == p].argmax(1), minlength=2) / (patient == p).sum() for p in range(3)]
    )
    np.testing.assert_allclose(votes["probs"], shares)
    assert np.isfinite(votes["score"]).all()  # a unanimous vote is a finite score


def test_calibration_recomputes_from_the_logits_in_the_shared_way():
    patient, _, logits, labels = _saturated()
    pred = _predictions(patient, logits, labels)
    hot = from_logits(pred, temperature=10.0)
    direct = patient_scores(patient, logits, temperature=10.0)
    np.testing.assert_array_equal(hot.patient_probs, direct["probs"])
    assert hot.temperature == 10.0 and (hot.patient_probs[:, 1] < 1.0).all()


def _predictions(patient: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> Predictions:
    names = list(DIFFERENCES)
    pred = Predictions(
        patient_ids=[names[p] for p in patient],
        slice_index=np.zeros(len(patient), dtype=int),
        labels=labels[patient],
        probs=np.zeros((len(patient), 2)),
        rows=np.arange(len(patient)),
        patients=names,
        patient_probs=np.zeros((len(names), 2)),
        patient_labels=labels,
        slices_per_patient=np.bincount(patient),
        slice_patient=patient,
        logits=logits[:, None, :],
    )
    return from_logits(pred)


def test_patient_frame_writes_the_score_column():
    patient, _, logits, labels = _saturated()
    frame = patient_frame(_predictions(patient, logits, labels), ["LGG", "HGG"], 0.5)
    assert list(frame.columns) == ["patient_id", "label", "probability", "prediction", "n_slices", "score"]
    assert isinstance(frame, pd.DataFrame) and frame["score"].is_unique

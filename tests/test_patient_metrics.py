"""Patient aggregation and the metric suite against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from gliograde.models.module import _warmup_cosine
from gliograde.models.patient_metrics import PatientProbabilities, classification_metrics


def _probs(p1):
    p1 = torch.tensor(p1, dtype=torch.float32)
    return torch.stack([1 - p1, p1], dim=1)


def _logits(p1):
    """Logits whose softmax is ``_probs(p1)``."""
    return _probs(p1).double().log()


def test_patient_probability_is_the_mean_over_its_slices_counted_once():
    metric = PatientProbabilities()
    # patient 7: slices 0 and 1; patient 3: slice 5. The last row repeats (7, 1), as a
    # DistributedSampler's padding would, and must not count twice.
    metric.update(_logits([0.2, 0.6]), torch.tensor([1, 1]), torch.tensor([7, 7]), torch.tensor([0, 1]))
    metric.update(_logits([0.9, 0.6]), torch.tensor([0, 1]), torch.tensor([3, 7]), torch.tensor([5, 1]))
    rows = metric.compute()
    patients, probs, labels = rows["patient"], rows["probs"], rows["label"]
    assert len(rows["slice_probs"]) == 3 and rows["slice_label"].tolist() == [0, 1, 1]
    assert patients.tolist() == [3, 7]
    assert torch.allclose(probs[:, 1], torch.tensor([0.9, 0.4], dtype=torch.float64))
    assert torch.allclose(probs.sum(1), torch.ones(2, dtype=torch.float64))
    assert labels.tolist() == [0, 1]


def test_binary_metrics_match_hand_computation():
    # labels:      1    1    1    0    0    0    0
    # p(HGG):     .9   .8   .3   .6   .2   .1   .4
    # predicted:   1    1    0    1    0    0    0  -> TP=2 FN=1 FP=1 TN=3
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0])
    values = classification_metrics(
        _probs([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.4]), labels, prefix="test/patient_"
    )
    sensitivity, specificity = 2 / 3, 3 / 4
    expected = {
        "accuracy": 5 / 7,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "f1": 2 * 2 / (2 * 2 + 1 + 1),
        # pairs (pos, neg) ranked correctly: .9 and .8 beat all 4; .3 beats .2 and .1 -> 10/12
        "auroc": 10 / 12,
    }
    for name, value in expected.items():
        assert values[f"test/patient_{name}"].item() == pytest.approx(value, abs=1e-6), name


def test_auroc_is_nan_when_only_one_class_is_present():
    values = classification_metrics(_probs([0.2, 0.7]), torch.tensor([1, 1]), prefix="val/patient_")
    for name in ("auroc", "specificity", "balanced_accuracy"):
        assert math.isnan(values[f"val/patient_{name}"].item()), name
    assert values["val/patient_sensitivity"].item() == 0.5


def test_warmup_then_cosine_schedule():
    factor = _warmup_cosine(total=110, warmup=10, floor=0.0)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5)
    assert factor(110) == pytest.approx(0.0, abs=1e-9)


def test_one_patient_keeps_its_row_dimension_and_undefined_metrics_are_nan():
    metric = PatientProbabilities()
    metric.update(_logits([0.8]), torch.tensor([1]), torch.tensor([4]), torch.tensor([9]))
    rows = metric.rows()
    assert rows["patient"].tolist() == [4] and rows["label"].tolist() == [1]
    assert rows["probs"].shape == (1, 2) and rows["slice_probs"].shape == (1, 2)
    assert rows["slice_label"].tolist() == [1]
    values = classification_metrics(rows["probs"], rows["label"], prefix="val/patient_")
    assert values["val/patient_accuracy"].item() == 1.0
    assert values["val/patient_sensitivity"].item() == 1.0
    for name in ("auroc", "specificity", "balanced_accuracy"):
        assert math.isnan(values[f"val/patient_{name}"].item()), name

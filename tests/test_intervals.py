"""Patient-level intervals: published and hand-computed cases, the boundary, and tiny inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from gliograde.evaluation.delong import delong_covariance, delong_test
from gliograde.evaluation.intervals import (
    MIN_PER_CLASS,
    auroc_interval,
    format_interval,
    newcombe_auroc_interval,
    patient_intervals,
    wilson_interval,
)
from gliograde.evaluation.metrics import METRICS, binary_metrics, bootstrap_intervals
from gliograde.evaluation.paired import compare_calls, exact_paired_pvalue, paired_difference_interval

Z = norm.ppf(0.975)


def test_wilson_matches_newcombe_1998_and_the_closed_form():
    # Newcombe (1998), Stat Med 17:857, Table I, method 3 (Wilson score)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=5e-5)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=5e-5)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=5e-5)
    # all n right: the lower bound is n / (n + z^2), not 1
    assert wilson_interval(5, 5) == pytest.approx((5 / (5 + Z**2), 1.0))
    assert all(np.isnan(wilson_interval(0, 0)))


def test_five_of_five_right_is_no_longer_certain():
    labels = np.array([1, 1, 1, 0, 0])
    probs = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    result = patient_intervals(labels, probs, resamples=50)
    acc = result["accuracy"]
    assert acc["value"] == 1.0 and acc["ci_high"] == 1.0 and acc["ci_low"] == pytest.approx(5 / (5 + Z**2))
    assert acc["ci_method"] == "wilson" and acc["unreliable"]
    sens_low, _ = wilson_interval(3, 3)
    spec_low, _ = wilson_interval(2, 2)
    bal = result["balanced_accuracy"]
    assert bal["ci_method"] == "mover-wilson"
    assert bal["ci_low"] == pytest.approx(1 - np.hypot(1 - sens_low, 1 - spec_low) / 2)
    auc = result["auroc"]
    assert auc["value"] == 1.0 and auc["ci_method"] == "newcombe-score" and auc["ci_low"] < 0.9
    # a percentile bootstrap cannot leave 1: its zero-width interval is no interval at all
    f1 = result["f1"]
    assert f1["value"] == 1.0 and f1["ci_low"] is None and f1["ci_high"] is None
    assert f1["ci_note"].startswith("not estimable") and f1["unreliable"]
    assert format_interval(f1) == "1.000 [not estimable]*"
    assert format_interval(acc).endswith("*") and "[0.566, 1.000]" in format_interval(acc)


def test_newcombe_auroc_bounds_solve_the_score_equation():
    m, n, auc = 5, 5, 1.0
    low, high = newcombe_auroc_interval(auc, m, n)
    var = low * (1 - low) / (m * n) * (1 + (5 - 1) * ((1 - low) / (2 - low) + low / (1 + low)))
    assert (auc - low) ** 2 == pytest.approx(Z**2 * var) and high == 1.0
    wide, narrow = newcombe_auroc_interval(0.8, 5, 5), newcombe_auroc_interval(0.8, 50, 50)
    assert wide[0] < narrow[0] < 0.8 < narrow[1] < wide[1]


def test_delong_on_a_hand_computed_case():
    # positives 0.9 0.8 0.4, negatives 0.7 0.3: placements V10 = 1, 1, 1/2 and V01 = 2/3, 1
    labels = np.array([1, 1, 1, 0, 0])
    a = np.array([0.9, 0.8, 0.4, 0.7, 0.3])
    aucs, cov = delong_covariance(labels, a)
    # S10 = var(1, 1, 1/2) = 1/12, S01 = var(2/3, 1) = 1/18: 1/12/3 + 1/18/2 = 1/18
    assert aucs[0] == pytest.approx(5 / 6) == roc_auc_score(labels, a)
    assert cov[0, 0] == pytest.approx(1 / 18)
    low, high, method = auroc_interval(labels, a)
    assert method == "delong" and low == pytest.approx(5 / 6 - Z * np.sqrt(1 / 18)) and high == 1.0
    # B: positives 0.6 0.2 0.5 -> V10 = 1/2, 0, 1/2; negatives -> V01 = 0, 2/3; AUROC 1/3.
    # differences V10: 1/2, 1, 0 (var 1/4), V01: 2/3, 1/3 (var 1/18): var = 1/12 + 1/36 = 1/9
    b = np.array([0.6, 0.2, 0.5, 0.7, 0.3])
    test = delong_test(labels, a, b)
    assert test["auroc_b"] == pytest.approx(1 / 3) and test["difference"] == pytest.approx(1 / 2)
    assert test["z"] == pytest.approx(1.5)
    assert test["p_value"] == pytest.approx(2 * norm.sf(1.5))
    assert test["ci_low"] == pytest.approx(0.5 - Z / 3)
    same = delong_test(labels, a, a)
    assert same["difference"] == 0 and same["p_value"] is None and "zero" in same["note"]


def test_paired_interval_matches_the_published_newcombe_square_and_add_case():
    # Fagerland, Lydersen & Laake (2017) ch. 8, Cavo et al. 2012: table 59, 6 / 16, 80
    a = np.array([1] * 59 + [1] * 6 + [0] * 16 + [0] * 80, bool)
    b = np.array([1] * 59 + [0] * 6 + [1] * 16 + [0] * 80, bool)
    d, low, high = paired_difference_interval(a, b)
    assert (d, low, high) == pytest.approx((-0.0621, -0.1186, -0.0046), abs=5e-5)
    # agreement on every patient still leaves an interval around 0
    _, low, high = paired_difference_interval(np.ones(5, bool), np.ones(5, bool))
    assert low < -0.3 and high > 0.3


def test_exact_mcnemar_and_its_stratified_form():
    from scipy.stats import binomtest

    a = np.array([1] * 12 + [0] * 2 + [1] * 36, bool)
    b = np.array([0] * 12 + [1] * 2 + [1] * 36, bool)
    assert exact_paired_pvalue(a, b, np.full(50, 1 / 50)) == pytest.approx(binomtest(12, 14).pvalue)
    assert exact_paired_pvalue(a, a, np.full(50, 1 / 50)) == 1.0
    # one discordant positive (weight 1/4) and one discordant negative (1/6), both for A:
    # the null values are +-1/4 +-1/6, each 1/4 likely; only +-(1/4 + 1/6) reach the observed
    labels = np.array([1, 1, 0, 0, 0])
    calls_a = np.array([1, 1, 0, 0, 0])
    calls_b = np.array([0, 1, 1, 0, 0])
    result = compare_calls(labels, calls_a, calls_b)
    bal = result["balanced_accuracy"]
    assert bal["difference"] == pytest.approx(0.5 * (1 / 2) + 0.5 * (1 / 3))
    assert bal["p_value"] == pytest.approx(0.5)
    assert result["accuracy"]["p_value"] == pytest.approx(0.5)  # 2 of 2 discordant: 2 * 1/4
    assert bal["ci_low"] < 0 < bal["difference"] < bal["ci_high"]


@pytest.mark.parametrize(
    "labels, probs",
    [
        ([1], [0.7]),  # one patient
        ([0], [0.7]),
        ([0, 0, 0], [0.2, 0.6, 0.4]),  # one class present
        ([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]),  # all predictions equal
        ([], []),  # nobody
    ],
)
def test_tiny_inputs_give_null_not_a_crash(labels, probs):
    labels, probs = np.array(labels, dtype=int), np.array(probs, dtype=float)
    result = patient_intervals(labels, probs, resamples=20)
    json.dumps(result, allow_nan=False)  # valid JSON: undefined is null
    assert set(result) == set(METRICS)
    for entry in result.values():
        assert entry["unreliable"]
        if entry["value"] is None:
            assert entry["ci_low"] is None and entry["ci_high"] is None
        elif entry["ci_low"] is not None:
            assert entry["ci_low"] <= entry["value"] + 1e-12 and entry["value"] <= entry["ci_high"] + 1e-12
    if len(set(labels.tolist())) < 2:
        assert result["auroc"]["value"] is None and result["balanced_accuracy"]["value"] is None
    boot = bootstrap_intervals(lambda i: binary_metrics(labels[i], probs[i]), len(labels), resamples=10)
    assert set(boot) == set(METRICS)
    calls = (probs >= 0.5).astype(int)
    paired = compare_calls(labels, calls, 1 - calls)
    json.dumps(paired, allow_nan=False)
    json.dumps(delong_test(labels, probs, 1 - probs), allow_nan=False)


def test_unreliable_flag_follows_the_class_counts():
    rng = np.random.default_rng(0)
    labels = np.array([1] * (MIN_PER_CLASS + 5) + [0] * (MIN_PER_CLASS - 1))
    probs = np.clip(labels * 0.4 + rng.random(len(labels)) * 0.6, 0, 1)
    result = patient_intervals(labels, probs, resamples=50)
    assert not result["sensitivity"]["unreliable"]  # positives: 15
    assert result["specificity"]["unreliable"] and result["auroc"]["unreliable"]  # negatives: 9
    big = np.array([1] * 30 + [0] * 30)
    result = patient_intervals(big, np.clip(big * 0.3 + rng.random(60) * 0.7, 0, 1), resamples=50)
    assert not any(e["unreliable"] for e in result.values())
    assert result["auroc"]["ci_method"] == "delong"


def test_resample_metrics_equal_binary_metrics_on_ties_edges_and_one_class():
    """The bootstrap's NumPy metrics are scikit-learn's and torchmetrics' to rounding."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    from gliograde.evaluation.metrics import BOOTSTRAPPED, resample_metrics

    rng = np.random.default_rng(5)
    cases = [
        (np.array([1, 1, 0, 0, 1]), np.array([0.3, 0.3, 0.3, 0.7, 1.0])),  # ties, bin edges, 1.0
        (np.array([0, 0, 0]), np.array([0.2, 0.9, 0.5])),  # one class
        (np.array([1, 1]), np.array([0.0, 0.5])),
        (np.array([1, 0]), np.array([0.5, 0.5])),
    ]
    for _ in range(40):
        n = int(rng.integers(2, 30))
        labels = rng.integers(0, 2, n)
        probs = np.round(rng.random(n), int(rng.integers(1, 4)))  # rounding makes ties
        cases.append((labels, probs))
    edges = torch.linspace(0, 1, 11, dtype=torch.float64).numpy()
    cases.append((np.array([1, 0, 1, 0]), edges[[3, 6, 7, 9]]))  # probabilities on the bin edges
    for labels, probs in cases:
        reference = binary_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels), n_bins=10)
        assert binary_metrics(labels, probs)["ece"] == pytest.approx(float(reference), abs=1e-12)
        for threshold in (0.5, 0.3):
            fast = resample_metrics(labels, probs, threshold)
            slow = binary_metrics(labels, probs, threshold)
            for name in BOOTSTRAPPED:
                assert fast[name] == pytest.approx(slow[name], abs=1e-12, nan_ok=True), (name, labels, probs)


def test_mover_wilson_matches_a_hand_computed_case():
    # sensitivity 8/10, Wilson [0.4902, 0.9433]; specificity 6/10, Wilson [0.3127, 0.8318]
    # (Newcombe 1998's closed form). MOVER (Zou & Donner 2008) for the mean 0.7:
    # low  = 0.7 - sqrt((0.8 - 0.4902)^2 + (0.6 - 0.3127)^2) / 2 = 0.4887
    # high = 0.7 + sqrt((0.9433 - 0.8)^2 + (0.8318 - 0.6)^2) / 2 = 0.8363
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-5)
    assert wilson_interval(6, 10) == pytest.approx((0.3127, 0.8318), abs=5e-5)
    labels = np.array([1] * 10 + [0] * 10)
    probs = np.array([0.9] * 8 + [0.1] * 2 + [0.1] * 6 + [0.9] * 4)
    bal = patient_intervals(labels, probs, resamples=0)["balanced_accuracy"]
    assert bal["value"] == pytest.approx(0.7)
    assert (bal["ci_low"], bal["ci_high"]) == pytest.approx((0.4887, 0.8363), abs=2e-4)
    assert not bal["unreliable"] and "ci_note" not in bal


def test_a_constant_classifier_on_100_patients_gets_no_point_intervals_and_no_star():
    # 50 per class, every patient called HGG with probability 1. Its Brier score, F1 and MCC
    # depend only on the class mix, which a class-stratified bootstrap held fixed: it printed
    # [0.500, 0.500] and the like, starred as if a class had fewer than 10 patients.
    labels = np.array([1] * 50 + [0] * 50)
    probs = np.ones(100)
    result = patient_intervals(labels, probs, resamples=200)
    # Brier = the share of LGG patients: about 0.5 -+ 1.96 * sqrt(0.25 / 100)
    brier = result["brier"]
    assert brier["value"] == 0.5 and brier["ci_method"] == "bootstrap"
    assert (brier["ci_low"], brier["ci_high"]) == pytest.approx((0.40, 0.60), abs=0.03)
    f1 = result["f1"]  # 2 * share / (1 + share) of the HGG share: about 0.667 -+ 0.045
    assert f1["value"] == pytest.approx(2 / 3) and f1["ci_low"] < 0.64 and f1["ci_high"] > 0.69
    # MCC is 0 whatever the sample: no interval, and no pretence of one
    mcc = result["mcc"]
    assert mcc["value"] == 0.0 and mcc["ci_low"] is None and mcc["ci_high"] is None
    assert mcc["ci_note"] == "not estimable: every bootstrap resample gives the same value"
    assert format_interval(mcc) == "0.000 [not estimable]"
    # the proportions keep their Wilson intervals: 50 of 100 right is [0.4038, 0.5962]
    accuracy = result["accuracy"]
    assert (accuracy["ci_low"], accuracy["ci_high"]) == pytest.approx((0.4038, 0.5962), abs=5e-5)
    # every score ties: AUROC 0.5 with a real interval (DeLong's variance is zero: Newcombe's)
    auc = result["auroc"]
    assert auc["value"] == 0.5 and auc["ci_method"] == "newcombe-score"
    assert auc["ci_low"] < 0.5 < auc["ci_high"]
    assert not any(e["unreliable"] for e in result.values())
    assert "*" not in "".join(format_interval(e) for e in result.values())


def test_a_narrow_interval_is_printed_with_the_places_that_tell_its_bounds_apart():
    entry = {"value": 0.0002, "ci_low": 0.00011, "ci_high": 0.00042, "unreliable": False}
    assert format_interval(entry) == "0.000 [0.0001, 0.0004]"
    assert format_interval({**entry, "ci_low": 0.25, "ci_high": 0.75}) == "0.000 [0.250, 0.750]"


def test_the_star_counts_true_classes_not_predicted_ones():
    rng = np.random.default_rng(1)
    labels = np.array([1] * 50 + [0] * 50)
    probs = np.where(np.arange(100) < 97, 0.6 + 0.4 * rng.random(100), 0.1)  # 3 called LGG
    result = patient_intervals(labels, probs, resamples=40)
    assert not any(e["unreliable"] for e in result.values())
    assert result["f1"]["ci_low"] < result["f1"]["value"] < result["f1"]["ci_high"]  # a real bootstrap
    assert "ci_note" not in result["f1"]


def test_a_perfect_classifier_bootstrap_is_not_estimable_where_it_collapses():
    labels = np.array([1] * 12 + [0] * 12)
    probs = np.where(labels == 1, 0.9, 0.1)
    result = patient_intervals(labels, probs, resamples=40)
    for name in ("f1", "mcc", "auprc", "brier", "ece"):
        assert result[name]["ci_low"] is None and result[name]["ci_note"].startswith("not estimable"), name
    # Wilson: 12 of 12 right is [12 / (12 + z^2), 1]; Newcombe's AUROC interval leaves 1
    assert result["sensitivity"]["ci_low"] == pytest.approx(12 / (12 + Z**2))
    assert result["auroc"]["ci_low"] < 1.0 == result["auroc"]["ci_high"]
    assert not any(e["unreliable"] for e in result.values())
    assert patient_intervals(labels, probs, resamples=0)["f1"]["ci_note"].startswith("not computed")


def test_few_patients_of_a_class_flag_a_fitted_threshold_or_temperature():
    from gliograde.evaluation.intervals import UNRELIABLE_NOTE, few_per_class

    assert few_per_class(np.array([1] * 20 + [0] * 9)) and not few_per_class(np.array([1] * 10 + [0] * 10))
    assert few_per_class(np.array([1, 1, 1]))
    assert "threshold or temperature" in UNRELIABLE_NOTE


def _report(pred):
    from gliograde.evaluation.scores import score
    from gliograde.evaluation.summary import calls_of

    report = {
        "n_patients": len(pred.patients),
        "n_slices": len(pred.probs),
        "split": "test",
        "aggregate": "mean",
        "threshold": 0.5,
        "threshold_source": "evaluate.py threshold=0.5",
        "tta": "none",
        "calibration": {"method": "none"},
        "classes": ["LGG", "HGG"],
        "calls": calls_of(["HGG" if p >= 0.5 else "LGG" for p in pred.patient_probs[:, 1]], ["LGG", "HGG"]),
    }
    report.update(score(pred, 0.5, ["LGG", "HGG"], 0.95, 20, 0, show_progress=False))
    return report


def _slice_predictions(slice_logits: list[list[float]], labels: list[int]):
    """Predictions of patients with the given per-slice HGG - LGG logit differences."""
    from gliograde.evaluation.predict import Predictions, from_logits

    patient = np.concatenate([[i] * len(s) for i, s in enumerate(slice_logits)])
    diffs = np.concatenate(slice_logits)
    logits = np.stack([-diffs / 2, diffs / 2], axis=1)[:, None, :]
    names = [f"p{i}" for i in range(len(labels))]
    pred = Predictions(
        patient_ids=[names[p] for p in patient],
        slice_index=np.zeros(len(patient), dtype=int),
        labels=np.asarray(labels)[patient],
        probs=np.zeros((len(patient), 2)),
        rows=np.arange(len(patient)),
        patients=names,
        patient_probs=np.zeros((len(labels), 2)),
        patient_labels=np.asarray(labels),
        slices_per_patient=np.bincount(patient),
        slice_patient=patient,
        logits=logits,
    )
    return from_logits(pred)


def test_five_patients_print_no_zero_width_interval():
    from gliograde.evaluation.report import format_report

    # every slice right: a patient bootstrap of slices cannot move F1, MCC, accuracy...
    slices = [[4.0, 5.0, 6.0], [3.0, 7.0], [2.0, 3.0], [-4.0, -5.0], [-3.0, -6.0, -2.0]]
    pred = _slice_predictions(slices, [1, 1, 1, 0, 0])
    report = _report(pred)
    text = format_report(report)
    for level in ("patient", "slice"):
        for name, entry in report[level].items():
            if entry["ci_low"] is not None:
                assert entry["ci_high"] - entry["ci_low"] > 1e-9, (level, name)
            elif entry["value"] is not None:
                assert entry["ci_note"].startswith("not estimable"), (level, name)
    assert report["slice"]["f1"]["ci_note"] and report["slice"]["f1"]["unreliable"]  # 2 LGG patients
    assert "[1.000, 1.000]" not in text and "[0.000, 0.000]" not in text
    assert "[not estimable]*" in text and "fewer than 10 patients in a class" in text
    assert "[not estimable]: every bootstrap resample gives the same value" in text


def test_a_large_cohort_is_not_starred_but_a_threshold_or_temperature_on_few_patients_is():
    from gliograde.evaluation.report import format_report

    rng = np.random.default_rng(3)
    labels = [1] * 50 + [0] * 50
    pred = _slice_predictions([list(rng.normal(1 if y else -1, 2, size=2)) for y in labels], labels)
    report = _report(pred)
    text = format_report(report)
    assert "*" not in text and "fewer than" not in text
    starred = format_report({**report, "threshold_unreliable": True})
    assert "Threshold 0.500* on p(HGG)" in starred and "fewer than 10 patients in a class" in starred
    calibration = {"method": "temperature", "temperature": 1.5, "unreliable": True, "patient": {}}
    starred = format_report({**report, "calibration": calibration})
    assert "T=1.5000*" in starred and "fewer than 10 patients in a class" in starred


def test_the_model_card_prints_intervals_as_evaluate_does():
    from gliograde.contract.model_card_markdown import _interval_cell

    note = "not estimable: every bootstrap resample gives the same value"
    assert _interval_cell({"value": 0.0, "ci_low": None, "ci_high": None, "ci_note": note}) == note
    narrow = {"value": 0.0002, "ci_low": 0.00011, "ci_high": 0.00042, "unreliable": True}
    assert _interval_cell(narrow) == "[0.0001, 0.0004]*"
    assert _interval_cell({"value": 0.9, "ci_low": None, "ci_high": None}) == "n/a"  # training's point values


def test_delong_matches_the_midrank_formula_of_sun_and_xu_with_ties():
    # Sun & Xu (2014), IEEE Signal Process. Lett. 21:1389: V10_i = (R_i - R^pos_i) / n and
    # V01_j = 1 - (R_j - R^neg_j) / m from midranks over all, positive-only and negative-only scores
    from scipy.stats import rankdata

    rng = np.random.default_rng(7)
    labels = np.array([1] * 13 + [0] * 9)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: ties within and across classes
    pos, neg = scores[labels == 1], scores[labels == 0]
    m, n = len(pos), len(neg)
    ranks = rankdata(np.concatenate([pos, neg]))
    v10 = (ranks[:m] - rankdata(pos)) / n
    v01 = 1 - (ranks[m:] - rankdata(neg)) / m
    auc = v10.mean()
    var = np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n
    aucs, cov = delong_covariance(labels, scores)
    assert aucs[0] == pytest.approx(auc) == pytest.approx(roc_auc_score(labels, scores))
    assert cov[0, 0] == pytest.approx(var)
    low, high, method = auroc_interval(labels, scores)
    assert method == "delong"
    assert (low, high) == pytest.approx((max(0, auc - Z * np.sqrt(var)), min(1, auc + Z * np.sqrt(var))))


def test_all_resamples_at_once_give_each_resample_s_metrics_and_the_same_intervals():
    """resample_metrics_many scores a whole bootstrap at once; it must give what one resample at
    a time gives (ties, one class in a resample, given scores), and so the same intervals."""
    from gliograde.evaluation import metrics
    from gliograde.evaluation.metrics import BOOTSTRAPPED, resample_metrics, resample_metrics_many

    rng = np.random.default_rng(11)
    for trial in range(60):
        n = int(rng.integers(1, 30))
        labels = rng.integers(0, 2, n)
        probs = np.round(rng.random(n), int(rng.integers(1, 3)))  # ties and bin edges
        scores = np.round(rng.normal(size=n), 1) if trial % 2 else None
        draws = rng.integers(0, n, (40, n))
        many = resample_metrics_many(labels, probs, draws, 0.4, scores)
        for row, draw in enumerate(draws):
            one = resample_metrics(labels[draw], probs[draw], 0.4, None if scores is None else scores[draw])
            for name in BOOTSTRAPPED:
                assert many[name][row] == pytest.approx(one[name], abs=1e-12, nan_ok=True), (name, trial)
    labels = np.array([1] * 9 + [0] * 13)
    probs = rng.random(22)
    calls = []
    batched = patient_intervals(labels, probs, resamples=300, on_resample=lambda: calls.append(1))
    assert len(calls) == 301  # the point value, then each resample: progress as before
    one_at_a_time = metrics.bootstrap_intervals(
        lambda i: resample_metrics(labels[i], probs[i]), len(labels), resamples=300
    )
    for name in BOOTSTRAPPED:
        assert batched[name]["ci_low"] == pytest.approx(one_at_a_time[name]["ci_low"], abs=1e-12)
        assert batched[name]["ci_high"] == pytest.approx(one_at_a_time[name]["ci_high"], abs=1e-12)

"""Slice selection strategies and patient-level splits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from gliograde.data.errors import DataError
from gliograde.data.batches.slices import select_slices, validate_slice_spec
from gliograde.data.discovery.specs import SliceSpec, SplitSpec
from gliograde.data.batches.splits import assert_disjoint, read_splits, split_patients, write_splits

BRAIN = np.array([0, 0, 10, 40, 80, 100, 90, 60, 20, 0])
TUMOUR = np.array([0, 0, 0, 5, 30, 12, 30, 1, 0, 0])


@pytest.mark.parametrize(
    "spec, expected",
    [
        (SliceSpec(strategy="tumor_topk", k=3), [4, 5, 6]),
        (SliceSpec(strategy="tumor_topk", k=99), [3, 4, 5, 6, 7]),
        (SliceSpec(strategy="tumor_all", min_area=5), [3, 4, 5, 6]),
        (SliceSpec(strategy="tumor_all", min_area=1), [3, 4, 5, 6, 7]),
        (SliceSpec(strategy="brain", min_brain_fraction=0.6), [4, 5, 6, 7]),
        (SliceSpec(strategy="middle", n=3), [4, 5, 6]),
        (SliceSpec(strategy="middle", n=50), [2, 3, 4, 5, 6, 7, 8]),
        (SliceSpec(strategy="range", z_min=2, z_max=4), [2, 3, 4]),
        (SliceSpec(strategy="range", z_min=-3, z_max=-1), [7, 8, 9]),
    ],
)
def test_strategies(spec, expected):
    assert select_slices("P1", BRAIN, TUMOUR, spec).tolist() == expected


@pytest.mark.parametrize("strategy", ["tumor_topk", "tumor_all"])
def test_tumour_strategies_need_a_mask(strategy):
    with pytest.raises(DataError, match="patient P9: no tumour mask.*strategy=" + strategy):
        select_slices("P9", BRAIN, None, SliceSpec(strategy=strategy))


@pytest.mark.parametrize("strategy", ["brain", "middle", "range"])
def test_mask_free_strategies_work_without_a_mask(strategy):
    assert select_slices("P9", BRAIN, None, SliceSpec(strategy=strategy)).size > 0


def test_unknown_strategy_and_plane_are_rejected():
    with pytest.raises(ValueError, match="data.slices.strategy='best'"):
        validate_slice_spec(SliceSpec(strategy="best"))
    with pytest.raises(ValueError, match="data.slices.plane='oblique'"):
        validate_slice_spec(SliceSpec(plane="oblique"))


def _cohort(n_hgg=40, n_lgg=20):
    ids = [f"P{i:03d}" for i in range(n_hgg + n_lgg)]
    labels = [1] * n_hgg + [0] * n_lgg
    return ids, labels


def test_split_is_stratified_disjoint_and_seeded():
    ids, labels = _cohort()
    spec = SplitSpec(0.7, 0.15, 0.15, seed=7)
    assignment = split_patients(ids, labels, ("LGG", "HGG"), spec)
    assert set(assignment) == set(ids)
    counts = Counter((assignment[p], y) for p, y in zip(ids, labels))
    assert counts[("test", 1)] == 6 and counts[("test", 0)] == 3
    assert counts[("val", 1)] == 6 and counts[("val", 0)] == 3
    assert counts[("train", 1)] == 28 and counts[("train", 0)] == 14
    assert split_patients(ids, labels, ("LGG", "HGG"), spec) == assignment
    other = split_patients(ids, labels, ("LGG", "HGG"), SplitSpec(0.7, 0.15, 0.15, seed=8))
    assert other != assignment


def test_kfold_shares_the_test_set_and_has_disjoint_val_folds():
    ids, labels = _cohort()
    spec = SplitSpec(0.7, 0.15, 0.15, seed=1)
    plain_test = {p for p, s in split_patients(ids, labels, ("LGG", "HGG"), spec).items() if s == "test"}
    vals = []
    for fold in range(5):
        assignment = split_patients(ids, labels, ("LGG", "HGG"), spec, folds=5, fold=fold)
        assert {p for p, s in assignment.items() if s == "test"} == plain_test
        vals.append({p for p, s in assignment.items() if s == "val"})
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1 :])
    assert set().union(*vals) == set(ids) - plain_test


def test_too_few_patients_of_a_class_is_a_clear_error():
    ids, labels = _cohort(n_hgg=20, n_lgg=2)
    with pytest.raises(ValueError, match="class LGG has 2 patient\\(s\\).*needs at least 3"):
        split_patients(ids, labels, ("LGG", "HGG"), SplitSpec())
    with pytest.raises(ValueError, match="class LGG has 2 patient\\(s\\).*5 folds"):
        split_patients(ids, labels, ("LGG", "HGG"), SplitSpec(), folds=5, fold=0)


def test_bad_fractions_and_fold_are_rejected():
    ids, labels = _cohort()
    with pytest.raises(ValueError, match="sum to 1"):
        split_patients(ids, labels, ("LGG", "HGG"), SplitSpec(0.8, 0.15, 0.15))
    with pytest.raises(ValueError, match="data.fold=5 must be in 0..4"):
        split_patients(ids, labels, ("LGG", "HGG"), SplitSpec(), folds=5, fold=5)


def test_splits_csv_round_trip_and_leak_check(tmp_path):
    ids, labels = _cohort()
    assignment = split_patients(ids, labels, ("LGG", "HGG"), SplitSpec())
    path = tmp_path / "splits.csv"
    write_splits(path, assignment, {p: ("LGG", "HGG")[y] for p, y in zip(ids, labels)})
    assert path.read_text().splitlines()[0] == "patient_id,label,split"
    assert read_splits(path) == assignment
    with open(path, "a") as fh:
        fh.write(f"{ids[0]},HGG,{'val' if assignment[ids[0]] == 'test' else 'test'}\n")
    with pytest.raises(RuntimeError, match=f"patient {ids[0]} is in both"):
        read_splits(path)
    with pytest.raises(RuntimeError, match="leakage"):
        assert_disjoint([("A", "train"), ("B", "val"), ("A", "test")])


def test_a_class_without_patients_is_an_error():
    ids, labels = _cohort(n_hgg=30, n_lgg=0)
    with pytest.raises(ValueError, match="class LGG has 0 patient"):
        split_patients(ids, labels, ("LGG", "HGG"), SplitSpec())


def test_small_cohorts_get_our_message_not_sklearns():
    ids, labels = _cohort(n_hgg=3, n_lgg=3)
    with pytest.raises(ValueError, match="6 patients are too few for the split train/val/test=0.7/0.15/0.15"):
        split_patients(ids, labels, ("LGG", "HGG"), SplitSpec())
    ids, labels = _cohort(n_hgg=10, n_lgg=10)
    with pytest.raises(ValueError, match="class LGG has 5 patient\\(s\\) outside the test set; 6 folds"):
        split_patients(ids, labels, ("LGG", "HGG"), SplitSpec(0.5, 0.0, 0.5), folds=6, fold=0)

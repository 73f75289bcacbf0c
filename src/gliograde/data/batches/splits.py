"""Patient-level, label-stratified splits: train/val/test fractions, or K folds over train+val
with one fixed test set. A patient is never in two splits."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from gliograde.files.atomic import write_text
from gliograde.data.discovery.specs import SplitSpec
from gliograde.errors import ConfigError

SPLITS = ("train", "val", "test")


def split_patients(
    patient_ids: list[str],
    labels: list[int],
    classes: tuple[str, ...],
    spec: SplitSpec,
    folds: int | None = None,
    fold: int | None = None,
) -> dict[str, str]:
    """Assign every patient to ``train``, ``val`` or ``test``.

    The test set depends only on ``spec`` (fraction and seed), so K-fold runs share it. With
    ``folds=K``, ``fold=i`` picks the i-th stratified fold of the remaining patients as val.
    """
    _check_fractions(spec)
    counts = Counter(labels)
    for label in range(len(classes)):
        needed = _per_class_minimum(spec, folds)
        if counts.get(label, 0) < needed:
            raise ConfigError(
                f"class {classes[label]} has {counts.get(label, 0)} patient(s); the split "
                f"{_describe(spec, folds)} needs at least {needed} of each class"
            )
    ids, ys = list(patient_ids), list(labels)
    assignment: dict[str, str] = {}
    if spec.test > 0:
        _check_stratifiable(len(ids), spec.test, len(classes), "test", spec, folds)
        ids, test_ids, ys, _ = train_test_split(
            ids, ys, test_size=spec.test, stratify=ys, random_state=spec.seed
        )
        assignment.update(dict.fromkeys(test_ids, "test"))
    if folds:
        if fold is None or not 0 <= fold < folds:
            raise ConfigError(f"data.fold={fold} must be in 0..{folds - 1} when data.folds={folds}")
        remaining = Counter(ys)
        for label in range(len(classes)):
            if remaining.get(label, 0) < folds:
                raise ConfigError(
                    f"class {classes[label]} has {remaining.get(label, 0)} patient(s) outside the test set; "
                    f"{folds} folds need at least {folds}"
                )
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=spec.seed)
        train_idx, val_idx = list(splitter.split(ids, ys))[fold]
        assignment.update({ids[i]: "train" for i in train_idx})
        assignment.update({ids[i]: "val" for i in val_idx})
    elif spec.val > 0:
        val_share = spec.val / (spec.train + spec.val)
        _check_stratifiable(len(ids), val_share, len(classes), "val", spec, folds)
        train_ids, val_ids = train_test_split(ids, test_size=val_share, stratify=ys, random_state=spec.seed)
        assignment.update(dict.fromkeys(train_ids, "train"))
        assignment.update(dict.fromkeys(val_ids, "val"))
    else:
        assignment.update(dict.fromkeys(ids, "train"))
    return {pid: assignment[pid] for pid in patient_ids}


def _per_class_minimum(spec: SplitSpec, folds: int | None) -> int:
    """Patients a class needs: one per split it must appear in (and per fold)."""
    if folds:
        return folds + (1 if spec.test > 0 else 0)
    return 1 + (spec.test > 0) + (spec.val > 0)


def _check_stratifiable(
    n: int, fraction: float, n_classes: int, name: str, spec: SplitSpec, folds: int | None
) -> None:
    """A stratified split needs at least one patient per class on each side (sklearn's rule)."""
    taken = math.ceil(fraction * n)
    if taken < n_classes or n - taken < n_classes:
        raise ConfigError(
            f"{n} patients are too few for the split {_describe(spec, folds)}: the {name} set would get "
            f"{taken} and the rest {n - taken}, and each needs at least one patient of each of the "
            f"{n_classes} classes"
        )


def _check_fractions(spec: SplitSpec) -> None:
    fractions = (spec.train, spec.val, spec.test)
    if min(fractions) < 0 or spec.train <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(
            f"data.split fractions train={spec.train} val={spec.val} test={spec.test} "
            "must be non-negative, with train > 0, and sum to 1"
        )


def _describe(spec: SplitSpec, folds: int | None) -> str:
    if folds:
        return f"{folds} folds with test={spec.test}"
    return f"train/val/test={spec.train}/{spec.val}/{spec.test}"


def assert_disjoint(rows: list[tuple[str, str]]) -> None:
    """Fail loudly if any patient appears in more than one split."""
    seen: dict[str, str] = {}
    for patient_id, split in rows:
        if patient_id in seen and seen[patient_id] != split:
            raise RuntimeError(f"patient {patient_id} is in both {seen[patient_id]} and {split}: leakage")
        seen[patient_id] = split


def splits_frame(assignment: dict[str, str], labels: dict[str, str]) -> pd.DataFrame:
    """``patient_id, label, split`` rows, train first, then val, test and all, by id within each."""
    order = sorted(
        assignment, key=lambda p: (SPLITS.index(assignment[p]) if assignment[p] in SPLITS else 3, p)
    )
    rows = [[p, labels.get(p, ""), assignment[p]] for p in order]
    return pd.DataFrame(rows, columns=["patient_id", "label", "split"], dtype=object)


def write_splits(path: str | Path, assignment: dict[str, str], labels: dict[str, str]) -> None:
    """Write :func:`splits_frame` as ``splits.csv`` (atomically)."""
    write_text(path, splits_frame(assignment, labels).to_csv(index=False, lineterminator="\n"))


def read_splits_table(path: str | Path) -> pd.DataFrame:
    """A ``splits.csv`` as a DataFrame (every cell text, as written), checked for disjointness."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert_disjoint(list(zip(frame["patient_id"], frame["split"])))
    return frame


def read_splits(path: str | Path) -> dict[str, str]:
    """Read a ``splits.csv`` back as {patient_id: split}, checking disjointness."""
    frame = read_splits_table(path)
    return dict(zip(frame["patient_id"], frame["split"]))

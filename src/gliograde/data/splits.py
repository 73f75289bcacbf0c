"""Patient-level, label-stratified splits: train/val/test fractions, or K folds over train+val
with one fixed test set. A patient is never in two splits."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

from sklearn.model_selection import StratifiedKFold, train_test_split

from gliograde.data.specs import SplitSpec

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
    parts = [("test", spec.test)] + ([] if folds else [("val", spec.val)])
    for label, count in sorted(counts.items()):
        needed = 1 + sum(1 for _, fraction in parts if fraction > 0)
        if folds:
            needed = max(needed, folds + (1 if spec.test > 0 else 0))
        if count < needed:
            raise ValueError(
                f"class {classes[label]} has {count} patient(s); the split "
                f"{_describe(spec, folds)} needs at least {needed} of each class"
            )
    ids, ys = list(patient_ids), list(labels)
    assignment: dict[str, str] = {}
    if spec.test > 0:
        ids, test_ids, ys, _ = train_test_split(ids, ys, test_size=spec.test, stratify=ys, random_state=spec.seed)
        assignment.update(dict.fromkeys(test_ids, "test"))
    if folds:
        if fold is None or not 0 <= fold < folds:
            raise ValueError(f"data.fold={fold} must be in 0..{folds - 1} when data.folds={folds}")
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=spec.seed)
        train_idx, val_idx = list(splitter.split(ids, ys))[fold]
        assignment.update({ids[i]: "train" for i in train_idx})
        assignment.update({ids[i]: "val" for i in val_idx})
    elif spec.val > 0:
        val_share = spec.val / (spec.train + spec.val)
        train_ids, val_ids = train_test_split(ids, test_size=val_share, stratify=ys, random_state=spec.seed)
        assignment.update(dict.fromkeys(train_ids, "train"))
        assignment.update(dict.fromkeys(val_ids, "val"))
    else:
        assignment.update(dict.fromkeys(ids, "train"))
    return {pid: assignment[pid] for pid in patient_ids}


def _check_fractions(spec: SplitSpec) -> None:
    fractions = (spec.train, spec.val, spec.test)
    if min(fractions) < 0 or spec.train <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
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


def write_splits(path: str | Path, assignment: dict[str, str], labels: dict[str, str]) -> None:
    """Write ``patient_id,label,split`` rows (atomically) after checking disjointness."""
    assert_disjoint(list(assignment.items()))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "label", "split"])
        for patient_id in sorted(assignment, key=lambda p: (SPLITS.index(assignment[p]), p)):
            writer.writerow([patient_id, labels.get(patient_id, ""), assignment[patient_id]])
    os.replace(tmp, path)


def read_splits(path: str | Path) -> dict[str, str]:
    """Read a ``splits.csv`` back as {patient_id: split}, checking disjointness."""
    with open(path, newline="") as fh:
        rows = [(row["patient_id"], row["split"]) for row in csv.DictReader(fh)]
    assert_disjoint(rows)
    return dict(rows)

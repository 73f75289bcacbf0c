"""Checks made once a cohort's patients are selected: a resumed run's saved split must hold the
same patients, labels and images; the same images under two ids must not sit in two splits; a
crop that does not fit the slice or the brain is warned about."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from gliograde.data.batches.crops import union_box
from gliograde.data.batches.splits import read_splits_table
from gliograde.data.caching.reader import CachedCohort
from gliograde.data.discovery.identity import content_duplicates, fingerprint_columns
from gliograde.data.errors import DataError
from gliograde.data.pipeline.options import DataOptions

ADDED = "added"  # the split of a patient missing from a resumed run's splits.csv (refused)

log = logging.getLogger(__name__)


def check_saved_split(
    saved_split: Path, assignment: Mapping[str, str], fingerprints: pd.DataFrame, labels: Mapping[str, str]
) -> None:
    """The patients selected (``assignment``, their ``fingerprints`` and label names) must be
    those of the saved split, with their labels and images."""
    saved = read_splits_table(saved_split).set_index("patient_id")
    added = sorted(p for p, where in assignment.items() if where == ADDED)
    removed = sorted(set(saved.index) - set(assignment))
    current = fingerprints.set_index("patient_id")
    columns = [c for c in fingerprint_columns(saved) if c in current.columns]
    changed = []
    for patient in sorted(set(saved.index) & set(assignment)):
        was, now = saved.loc[patient], current.loc[patient]
        images = any(was[c] and str(now[c]) != was[c] for c in columns)
        if images or str(was["label"]) != labels[patient]:
            changed.append(patient)
    news = [
        f"{len(names)} {what} (e.g. {names[0]})"
        for names, what in ((added, "added"), (removed, "removed"), (changed, "changed"))
        if names
    ]
    if news:
        raise DataError(
            f"the cohort differs from the run's split: patients {', '.join(news)}; a resumed run "
            "keeps its patients and split: restore the cohort as it was, or start a new run",
            where=saved_split,
        )


def refuse_shared_images(fingerprints: pd.DataFrame, assignment: Mapping[str, str], root: Path) -> None:
    """The same images under two ids in different splits would leak; in one split, warn."""
    for match in content_duplicates(fingerprints):
        where = (assignment[match.patient_id], assignment[match.other_id])
        shared = "/".join(match.modalities)
        if where[0] != where[1]:
            raise DataError(
                f"holds the same {shared} images as {match.other_id}, but they are in the "
                f"{where[0]} and {where[1]} splits (one patient under two ids would leak): "
                "remove one of the two folders",
                match.patient_id,
                root,
            )
        log.warning(
            "Patients %s and %s hold the same %s images (both in %s): one patient counted twice?",
            match.patient_id,
            match.other_id,
            shared,
            where[0],
        )


def warn_about_crop(cached: CachedCohort, options: DataOptions, positions: Mapping[str, int]) -> None:
    """One warning line for a crop larger than the slice (zeros around it), and one for a
    brain crop smaller than the brain of some patient (``positions``: id -> place in the cache;
    the brain is cut at its edges)."""
    crop, plane = options.crop_spec, options.slice_spec.plane
    if crop.mode == "none":
        return
    x, y, z = cached.shape
    rows, cols = {"axial": (y, x), "coronal": (z, x), "sagittal": (z, y)}[plane]
    if crop.size > rows or crop.size > cols:
        log.warning(
            "data.crop.size=%d is larger than the %dx%d %s slice: the square is padded with zeros "
            "(a size of at most %d keeps it within the slice)",
            crop.size, rows, cols, plane, min(rows, cols),
        )
    if crop.mode != "brain":
        return
    boxes = cached.brain_boxes_of(options.modalities, plane)
    widest = (0, 0, "")
    for patient_id, position in positions.items():
        r0, r1, c0, c1 = (int(v) for v in union_box(boxes[position]))
        if r0 >= 0 and max(r1 - r0 + 1, c1 - c0 + 1) > max(widest[:2]):
            widest = (r1 - r0 + 1, c1 - c0 + 1, patient_id)
    if max(widest[:2]) > crop.size:
        log.warning(
            "data.crop.size=%d is smaller than the brain of patient %s (%dx%d in the %s plane): "
            "data.crop.mode=brain cuts brains at their edges; choose data.crop.size=%d or more "
            "to keep them whole",
            crop.size, widest[2], widest[0], widest[1], plane, max(widest[:2]),
        )

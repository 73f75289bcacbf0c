"""The tables and counts that describe a prepared cohort: cohort.csv and skipped.csv beside
the cache, splits.csv in a run directory, and the summary ``prepare`` prints."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from gliograde.data.batches.splits import SPLITS, splits_frame
from gliograde.data.discovery.identity import fingerprint_table
from gliograde.data.discovery.specs import MODALITIES
from gliograde.data.errors import DataError
from gliograde.files.atomic import write_text

log = logging.getLogger(__name__)


class PreparedView(Protocol):
    """What these tables read of a ``prepared.PreparedCohort`` (named here, not imported: the
    prepared cohort writes its tables with this module)."""

    cohort: Any
    cached: Any
    skipped: list[DataError]
    patients: list[Any]
    assignment: dict[str, str]
    options: Any

    def label_name(self, label: int | None) -> str: ...


def cohort_table(prepared: PreparedView) -> pd.DataFrame:
    """One row per patient found: id, label, modality and mask paths, and ``ok``/``skipped``."""
    assert prepared.cohort is not None and prepared.cached is not None
    cached_ids = set(prepared.cached.patient_ids)
    skipped_ids = {err.patient for err in prepared.skipped if err.patient}
    rows = []
    for record in prepared.cohort.patients:
        usable = record.patient_id in cached_ids and record.patient_id not in skipped_ids
        rows.append(
            [record.patient_id, prepared.label_name(record.label)]
            + [str(record.modalities.get(m, "")) for m in MODALITIES]
            + [str(record.mask or ""), "ok" if usable else "skipped"]
        )
    listed = {row[0] for row in rows}
    for patient in sorted(skipped_ids - listed):  # skipped before their files were found
        rows.append([patient, ""] + [""] * len(MODALITIES) + ["", "skipped"])
    columns = ["patient_id", "label", *MODALITIES, "mask", "status"]
    return pd.DataFrame(sorted(rows), columns=columns, dtype=object)


def skipped_table(skipped: list[DataError]) -> pd.DataFrame:
    """One row per problem that left a patient out: id, file and problem."""
    rows = [[e.patient or "", e.where or "", e.problem] for e in skipped]
    return pd.DataFrame(rows, columns=["patient_id", "file", "problem"], dtype=object)


def write_cohort_tables(prepared: PreparedView) -> None:
    """cohort.csv and skipped.csv beside the cache (atomically; labels as read now).

    A complete cache may sit in a read-only place: then the tables are left as they are.
    """
    assert prepared.cached is not None
    directory = prepared.cached.directory
    if not os.access(directory, os.W_OK):
        log.info("Cache %s is read-only; not writing cohort.csv and skipped.csv", directory)
        return
    tables = (("cohort.csv", cohort_table(prepared)), ("skipped.csv", skipped_table(prepared.skipped)))
    try:
        for name, table in tables:
            write_text(directory / name, table.to_csv(index=False, lineterminator="\n"))
    except PermissionError as err:  # e.g. a read-only mount that os.access cannot see
        log.info("Not writing the cohort tables beside the cache (%s)", err)


def split_table(prepared: PreparedView) -> list[tuple[str, str, str]]:
    """(patient_id, label name, split) for every usable patient."""
    return [
        (p.patient_id, prepared.label_name(p.label), prepared.assignment[p.patient_id])
        for p in prepared.patients
    ]


def usable_fingerprints(prepared: PreparedView) -> pd.DataFrame:
    """``patient_id``, ``fingerprint_<modality>`` and ``order_fingerprint_<modality>`` of every
    usable patient (see ``identity``)."""
    assert prepared.cached is not None
    cached = prepared.cached
    table = fingerprint_table(cached.patient_ids, cached.fingerprints, cached.order_fingerprints)
    return table[table["patient_id"].isin(prepared.assignment)].reset_index(drop=True)


def splits_table(prepared: PreparedView) -> pd.DataFrame:
    """``patient_id, label, split`` and the image fingerprints of every usable patient."""
    labels = {pid: label for pid, label, _ in split_table(prepared)}
    frame = splits_frame(prepared.assignment, labels)
    return frame.merge(usable_fingerprints(prepared), on="patient_id", how="left")


def write_splits(prepared: PreparedView, path: str | Path) -> None:
    """Write ``splits.csv`` for a run directory: who was where, and what their images were."""
    write_text(path, splits_table(prepared).to_csv(index=False, lineterminator="\n"))


def summary(prepared: PreparedView) -> dict[str, Any]:
    """Counts a user wants to see after preparing a cohort."""
    assert prepared.cohort is not None and prepared.cached is not None
    per_class = Counter(prepared.label_name(p.label) or "unlabelled" for p in prepared.patients)
    split_counts = Counter(prepared.assignment.values())
    spec = prepared.options.slice_spec
    return {
        "root": str(prepared.cohort.root),
        "patients": len(prepared.patients),
        "patients_per_class": dict(sorted(per_class.items())),
        "skipped": len(prepared.skipped),
        "masks_found": int(sum(prepared.cached.has_mask)),
        "slices": int(sum(len(p.slices) for p in prepared.patients)),
        "slice_strategy": spec.strategy,
        "plane": spec.plane,
        "splits": {name: split_counts.get(name, 0) for name in (*SPLITS, "all") if split_counts.get(name)},
        "cache_path": str(prepared.cached.directory),
        "cache_bytes": prepared.cached.size_bytes(),
    }

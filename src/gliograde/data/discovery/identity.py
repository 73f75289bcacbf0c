"""Patient identity by image content, for leak checks that ids alone cannot make.

Released cohorts repackage the same images under new ids (and reuse ids for other images), so
a patient is known by its id *and* by two fingerprints per modality (see ``preprocess``): one
of its decoded voxels (``fingerprint_<modality>``), and one of the order of their values
(``order_fingerprint_<modality>``), which a positive rescaling of the intensities leaves as it
is, as z-scoring leaves the model's input as it is. Tables here hold one row per patient:
``patient_id`` and those columns of hex digests (empty where unknown; a cohort of fewer
modalities has fewer columns, a record made before the order fingerprints has none of them).
Two tables are compared on the modalities (and kinds) both know: two patients are one where
either fingerprint of a modality agrees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

PREFIX = "fingerprint_"
ORDER_PREFIX = "order_fingerprint_"
TRAINING_PATIENTS = "training_patients"  # a checkpoint's key for its training split's table


@dataclass(frozen=True)
class ContentMatch:
    """Two patients (under the same or different ids) that share at least one image."""

    patient_id: str
    other_id: str
    modalities: tuple[str, ...]

    def describe(self) -> str:
        same = "" if self.patient_id == self.other_id else f" (as {self.other_id})"
        return f"{self.patient_id}{same}: same {'/'.join(self.modalities)} voxels"


def fingerprint_table(
    patient_ids: Sequence[str],
    fingerprints: Mapping[str, Sequence[str]],
    order_fingerprints: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """``patient_id`` plus ``fingerprint_<modality>`` (and ``order_fingerprint_<modality>``)
    columns from per-modality digests."""
    table = pd.DataFrame({"patient_id": list(patient_ids)})
    for modality, digests in fingerprints.items():
        table[f"{PREFIX}{modality}"] = list(digests)
    for modality, digests in (order_fingerprints or {}).items():
        table[f"{ORDER_PREFIX}{modality}"] = list(digests)
    return table


def fingerprint_columns(table: pd.DataFrame) -> list[str]:
    """The fingerprint columns of ``table``, of both kinds (none for records written before
    fingerprints)."""
    return [c for c in table.columns if c.startswith((PREFIX, ORDER_PREFIX))]


def _long(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (patient, fingerprint column) with a known digest, and the column's modality."""
    columns = fingerprint_columns(table)
    if not columns:
        return pd.DataFrame(columns=["patient_id", "column", "modality", "digest"])
    long = table.melt(id_vars="patient_id", value_vars=columns, var_name="column", value_name="digest")
    long["modality"] = long["column"].str.removeprefix(ORDER_PREFIX).str.removeprefix(PREFIX)
    long["digest"] = long["digest"].fillna("").astype(str)
    return long[long["digest"] != ""]


def _matches(pairs: pd.DataFrame) -> list[ContentMatch]:
    if pairs.empty:
        return []
    grouped = pairs.groupby(["patient_id_a", "patient_id_b"], sort=True)["modality"]
    return [
        ContentMatch(str(a), str(b), tuple(sorted(set(modalities)))) for (a, b), modalities in grouped
    ]


def content_matches(evaluated: pd.DataFrame, reference: pd.DataFrame) -> list[ContentMatch]:
    """Evaluated patients whose images equal a reference patient's, under any id."""
    pairs = _long(evaluated).merge(_long(reference), on=["column", "digest"], suffixes=("_a", "_b"))
    return _matches(pairs.rename(columns={"modality_a": "modality"}))


def content_duplicates(table: pd.DataFrame) -> list[ContentMatch]:
    """Pairs of differently named patients of one table that share an image (each pair once)."""
    long = _long(table)
    pairs = long.merge(long, on=["column", "digest"], suffixes=("_a", "_b"))
    pairs = pairs[pairs["patient_id_a"] < pairs["patient_id_b"]]
    return _matches(pairs.rename(columns={"modality_a": "modality"}))


def id_collisions(evaluated: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """Ids present in both tables whose known fingerprints all differ: another patient, same name.

    Only modalities known on both sides are compared: a FLAIR-only record and a T2-only record
    of one id say nothing about each other.
    """
    shared = sorted(set(evaluated["patient_id"]) & set(reference["patient_id"]))
    if not shared or not fingerprint_columns(evaluated) or not fingerprint_columns(reference):
        return []
    same_content = {m.patient_id for m in content_matches(evaluated, reference) if m.patient_id == m.other_id}
    both = _long(evaluated).merge(_long(reference), on=["patient_id", "column"])
    known = set(both["patient_id"])
    return [pid for pid in shared if pid in known and pid not in same_content]


def shared_files(files: Mapping[str, Path]) -> str | None:
    """Why one file serves several of a patient's modalities (the same path, or links to one
    file), or None: each modality needs its own image."""
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(Path(path).resolve(), []).append(name)
    for path, names in by_file.items():
        if len(names) > 1:
            return f"{' = '.join(names)} name one file ({path}): each modality needs its own image"
    return None


def training_records(splits: pd.DataFrame) -> list[dict[str, str]]:
    """The ``train`` rows of a splits table as plain records, for a checkpoint to carry."""
    trained = splits[splits["split"] == "train"].fillna("").astype(str)
    return trained.to_dict("records")


def recorded_training_patients(checkpoint: Mapping[str, object]) -> pd.DataFrame | None:
    """The training split a loaded checkpoint carries (see :func:`training_records`), or None
    for a checkpoint made before they were recorded."""
    records = checkpoint.get(TRAINING_PATIENTS)
    if records is None:
        return None
    table = pd.DataFrame.from_records(list(records), columns=None if records else ["patient_id", "split"])
    return table.fillna("").astype(str)

"""Patient identity by image content, for leak checks that ids alone cannot make.

Released cohorts repackage the same images under new ids (and reuse ids for other images), so
a patient is known by its id *and* by a fingerprint of its decoded voxels per modality. Tables
here hold one row per patient: ``patient_id`` and one ``fingerprint_<modality>`` column of hex
digests (empty where unknown; a cohort of fewer modalities has fewer columns). Two tables are
compared on the modalities both know.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

PREFIX = "fingerprint_"


@dataclass(frozen=True)
class ContentMatch:
    """Two patients (under the same or different ids) that share at least one image."""

    patient_id: str
    other_id: str
    modalities: tuple[str, ...]

    def describe(self) -> str:
        same = "" if self.patient_id == self.other_id else f" (as {self.other_id})"
        return f"{self.patient_id}{same}: same {'/'.join(self.modalities)} voxels"


def fingerprint_table(patient_ids: Sequence[str], fingerprints: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """``patient_id`` plus ``fingerprint_<modality>`` columns from per-modality digests."""
    table = pd.DataFrame({"patient_id": list(patient_ids)})
    for modality, digests in fingerprints.items():
        table[f"{PREFIX}{modality}"] = list(digests)
    return table


def fingerprint_columns(table: pd.DataFrame) -> list[str]:
    """The fingerprint columns of ``table`` (none for records written before fingerprints)."""
    return [c for c in table.columns if c.startswith(PREFIX)]


def _long(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (patient, modality) with a known digest."""
    columns = fingerprint_columns(table)
    if not columns:
        return pd.DataFrame(columns=["patient_id", "modality", "digest"])
    long = table.melt(id_vars="patient_id", value_vars=columns, var_name="modality", value_name="digest")
    long["modality"] = long["modality"].str.removeprefix(PREFIX)
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
    pairs = _long(evaluated).merge(_long(reference), on=["modality", "digest"], suffixes=("_a", "_b"))
    return _matches(pairs)


def content_duplicates(table: pd.DataFrame) -> list[ContentMatch]:
    """Pairs of differently named patients of one table that share an image (each pair once)."""
    long = _long(table)
    pairs = long.merge(long, on=["modality", "digest"], suffixes=("_a", "_b"))
    pairs = pairs[pairs["patient_id_a"] < pairs["patient_id_b"]]
    return _matches(pairs)


def id_collisions(evaluated: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """Ids present in both tables whose known fingerprints all differ: another patient, same name.

    Only modalities known on both sides are compared: a FLAIR-only record and a T2-only record
    of one id say nothing about each other.
    """
    shared = sorted(set(evaluated["patient_id"]) & set(reference["patient_id"]))
    if not shared or not fingerprint_columns(evaluated) or not fingerprint_columns(reference):
        return []
    same_content = {m.patient_id for m in content_matches(evaluated, reference) if m.patient_id == m.other_id}
    both = _long(evaluated).merge(_long(reference), on=["patient_id", "modality"])
    known = set(both["patient_id"])
    return [pid for pid in shared if pid in known and pid not in same_content]

"""Identity by content: matches across tables, duplicates within one, id collisions."""

from __future__ import annotations

import pandas as pd

from gliograde.data.discovery.identity import (
    content_duplicates,
    content_matches,
    fingerprint_table,
    id_collisions,
)


def table(rows: dict[str, tuple[str, str]]) -> pd.DataFrame:
    ids = list(rows)
    return fingerprint_table(ids, {"flair": [rows[i][0] for i in ids], "t1": [rows[i][1] for i in ids]})


TRAINED = table({"P1": ("a1", "b1"), "P2": ("a2", "b2"), "P3": ("a3", "b3")})


def test_a_renamed_copy_matches_under_its_new_id():
    evaluated = table({"NEW_9": ("a2", "b2"), "X": ("zz", "yy")})
    [match] = content_matches(evaluated, TRAINED)
    assert (match.patient_id, match.other_id, match.modalities) == ("NEW_9", "P2", ("flair", "t1"))
    assert "as P2" in match.describe()


def test_one_shared_modality_is_enough_to_match():
    [match] = content_matches(table({"Q": ("a3", "other")}), TRAINED)
    assert match.other_id == "P3" and match.modalities == ("flair",)


def test_same_id_with_other_content_is_a_collision_not_a_match():
    evaluated = table({"P1": ("new", "new"), "P2": ("a2", "b2")})
    assert [m.patient_id for m in content_matches(evaluated, TRAINED)] == ["P2"]
    assert id_collisions(evaluated, TRAINED) == ["P1"]


def test_unknown_fingerprints_never_match_and_never_collide():
    evaluated = table({"P1": ("", ""), "Z": ("", "")})
    assert content_matches(evaluated, TRAINED) == []
    assert id_collisions(evaluated, TRAINED) == []
    old_record = pd.DataFrame({"patient_id": ["P1"]})  # written before fingerprints existed
    assert content_matches(evaluated, old_record) == [] and id_collisions(TRAINED, old_record) == []


def test_duplicates_within_a_table_are_listed_once_per_pair():
    cohort = table({"A": ("x", "y"), "B": ("x", "y"), "C": ("q", "y"), "D": ("r", "s")})
    pairs = [(m.patient_id, m.other_id, m.modalities) for m in content_duplicates(cohort)]
    assert pairs == [("A", "B", ("flair", "t1")), ("A", "C", ("t1",)), ("B", "C", ("t1",))]

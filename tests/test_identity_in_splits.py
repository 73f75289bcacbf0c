"""A patient present twice under two ids must not sit in two splits; splits.csv records content."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers.cohorts import copy_patient, make_datamodule

from gliograde.data.errors import DataError


def test_copies_under_new_ids_across_splits_are_refused(tiny_cohort, tmp_path):
    for n in range(8):  # eight copies of one patient cannot all land in one split
        copy_patient(tiny_cohort, "BraTS20_Training_002", f"BraTS20_Training_{101 + n}")
    dm = make_datamodule(tiny_cohort, tmp_path / "cache")
    with pytest.raises(DataError, match=r"same flair/t1/t1ce/t2 images as BraTS20_Training_1\d\d.* splits"):
        dm.setup()


def test_splits_csv_records_each_patients_fingerprints(tiny_cohort, tmp_path):
    dm = make_datamodule(tiny_cohort, tmp_path / "cache")
    dm.setup()
    dm.write_splits(tmp_path / "splits.csv")
    table = pd.read_csv(tmp_path / "splits.csv", dtype=str)
    fingerprints = [f"fingerprint_{m}" for m in ("flair", "t1", "t1ce", "t2")]
    orders = [f"order_fingerprint_{m}" for m in ("flair", "t1", "t1ce", "t2")]
    assert list(table.columns) == ["patient_id", "label", "split", *fingerprints, *orders]
    assert len(table) == 24 and table["fingerprint_t1"].str.fullmatch("[0-9a-f]{64}").all()
    assert table["order_fingerprint_t1"].str.fullmatch("[0-9a-f]{64}").all()
    assert table["fingerprint_flair"].nunique() == 24 and table["order_fingerprint_flair"].nunique() == 24

"""CSV tables: read with every cell as written, written whole or not at all."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from gliograde.files.atomic import write_frame
from gliograde.data.errors import DataError
from gliograde.files.tables import read_table


def test_read_table_keeps_cells_as_written(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("patient_id,label,prob\n001,NA,0.100000\n002,,\n")
    frame = read_table(path)
    assert frame.to_dict("records") == [
        {"patient_id": "001", "label": "NA", "prob": "0.100000"},
        {"patient_id": "002", "label": "", "prob": ""},
    ]


def test_read_table_of_an_empty_file_has_no_columns(tmp_path):
    (tmp_path / "e.csv").write_text("")
    assert list(read_table(tmp_path / "e.csv").columns) == []


def test_read_table_fills_short_rows_and_keeps_the_first_column_with_a_wide_first_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n001,x,y,extra\n002\n")
    with pytest.warns(pd.errors.ParserWarning):
        frame = read_table(path)
    assert frame.to_dict("records") == [{"a": "001", "b": "x", "c": "y"}, {"a": "002", "b": "", "c": ""}]


@pytest.mark.parametrize(
    ("text", "problem"),
    [(b"a,b\n1,2\n3,4,5\n", "malformed CSV (Error tokenizing data"), (b"a,b\n\xff,1\n", "not UTF-8 text")],
)
def test_read_table_names_the_file_of_a_malformed_table(tmp_path, text, problem):
    path = tmp_path / "bad.csv"
    path.write_bytes(text)
    with pytest.raises(DataError) as err:
        read_table(path)
    assert str(err.value).startswith(f"{path}: {problem}")
    assert "\n" not in str(err.value)


def test_write_frame_quotes_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "p.csv"
    frame = pd.DataFrame({"patient_id": ["001"], "prob_HGG": [0.25], "n": [3], "note": ["a,b"]})
    write_frame(path, frame)
    assert path.read_text() == 'patient_id,prob_HGG,n,note\n001,0.25,3,"a,b"\n'
    assert os.listdir(tmp_path) == ["p.csv"]



def test_training_patient_predictions_keep_their_columns_and_full_precision(tmp_path):
    from types import SimpleNamespace

    import torch

    from gliograde.training.fit import _write_patient_predictions

    datamodule = SimpleNamespace(classes=["LGG", "HGG"], cached=SimpleNamespace(patient_ids=["001", "002"]))
    outputs = {
        "patient": torch.tensor([1, 0]),
        "label": torch.tensor([1, -1]),
        "probs": torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64),
    }
    _write_patient_predictions(tmp_path / "p.csv", outputs, datamodule)
    assert (tmp_path / "p.csv").read_text() == (
        "patient_id,label,prob_LGG,prob_HGG\n002,HGG,0.25,0.75\n001,,0.5,0.5\n"
    )


def test_prediction_tables_keep_the_ranking_of_saturated_probabilities(tmp_path):
    """A confident model's probabilities differ beyond the 6th decimal; the written table must
    give back the same values, so an AUROC recomputed from it is the one that was reported."""
    from sklearn.metrics import roc_auc_score

    probs = np.array([1 - 3e-7, 1 - 1e-9, 1 - 2e-7, 1 - 5e-8, 0.9999994, 1 - 1e-12])
    labels = np.array([0, 1, 0, 1, 0, 1])
    frame = pd.DataFrame({"patient_id": [f"{i:03d}" for i in range(6)], "label": labels, "probability": probs})
    path = tmp_path / "patient_predictions.csv"
    write_frame(path, frame)  # what evaluate, training and predict write their tables with
    back = read_table(path)["probability"].astype(float).to_numpy()
    assert np.array_equal(back, probs)
    assert roc_auc_score(labels, back) == roc_auc_score(labels, probs) == 1.0
    assert os.listdir(tmp_path) == ["patient_predictions.csv"]

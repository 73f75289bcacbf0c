"""A validation or test stage that sees a single patient (Lightning's sanity check, limited
batches) works at the real BraTS volume size with the article's slice rule."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from helpers.commands import run_python

from gliograde.data.synthetic.generator import generate_cohort

# full-size volumes and a `python train.py` run
pytestmark = pytest.mark.slow


@pytest.fixture
def full_size_cohort(tmp_path) -> Path:
    """Six patients (three LGG) of 240x240x155; removed with its cache and run after the test."""
    yield generate_cohort(tmp_path / "cohort", patients=6, seed=5, lgg_fraction=0.5)
    for child in tmp_path.iterdir():
        shutil.rmtree(child, ignore_errors=True)


def _scalars(run: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    values = []
    for path in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            values += [float(make_ndarray(v.tensor)) for v in event.summary.value if v.tag == tag]
    return values


def test_article_setup_with_one_patient_per_stage_reports_undefined_metrics(full_size_cohort, tmp_path):
    run = tmp_path / "run"
    # Two slices a batch, so the sanity check's two batches, the validation epoch's and the
    # test's all hold slices of one patient (tumor_all gives each patient dozens).
    result = run_python(
        "train.py",
        "experiment=article",
        "data=brats2020",
        f"data.root={full_size_cohort}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.progress=false",
        "data.preprocess.workers=1",
        "data.batch_size=2",
        "data.split.train=0.5",
        "data.split.val=0.25",
        "data.split.test=0.25",
        "model.stem_stride=null",  # the article's stride-1 stem costs 4x the compute; not under test
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=1",
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val/patient_count"] == 1 and metrics["test/patient_count"] == 1
    assert metrics["test/patient_accuracy"] in (0.0, 1.0)
    # One class present: AUROC, specificity or sensitivity, balanced accuracy are undefined,
    # so metrics.json leaves them out ...
    for stage in ("val", "test"):
        assert f"{stage}/patient_auroc" not in metrics and f"{stage}/patient_balanced_accuracy" not in metrics
    # ... and the logs carry NaN.
    logged = _scalars(run, "val/patient_auroc")
    assert logged and all(math.isnan(v) for v in logged)
    assert "train/auroc" not in metrics  # the one training batch holds one patient's slices too
    assert all(math.isnan(v) for v in _scalars(run, "train/auroc"))
    assert len((run / "predictions_test.csv").read_text().splitlines()) == 2  # header + one patient

"""A run trained before the package was arranged by role keeps working: the ``_target_`` class
paths its saved config.yaml names are mapped to where the classes live now."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
from helpers.commands import run_python
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from gliograde.config.legacy_targets import LEGACY_TARGETS, current_targets
from gliograde.evaluation.inputs import load_run_config
from gliograde.training.callbacks import SampleSlicesToTensorBoard, TestConfusionMatrixToTensorBoard

# The gliograde classes conf/ named before the move, as every earlier run's config.yaml holds them.
OLD_RUN_TARGETS = {
    "data": "gliograde.data.datamodule.GliomaDataModule",
    "model": "gliograde.models.module.GradeClassifier",
    "segmenter": "gliograde.segmentation.module.TumourSegmenter",
    "sample_slices": "gliograde.callbacks.SampleSlicesToTensorBoard",
    "confusion_matrix": "gliograde.callbacks.TestConfusionMatrixToTensorBoard",
    "mlflow": "gliograde.tracking.LocalMLFlowLogger",
    "check_output_dir": "gliograde.hydra_callbacks.CheckOutputDirectory",
    "sweep_report": "gliograde.hydra_callbacks.SweepReport",
}

OLD_CONFIG = """\
data:
  _target_: gliograde.data.datamodule.GliomaDataModule
  root: somewhere
callbacks:
  sample_slices:
    _target_: gliograde.callbacks.SampleSlicesToTensorBoard
    max_samples: 4
  confusion_matrix:
    _target_: gliograde.callbacks.TestConfusionMatrixToTensorBoard
logger:
  mlflow:
    _target_: gliograde.tracking.LocalMLFlowLogger
    experiment_name: ${task_name}
task_name: train
"""


@pytest.mark.parametrize("name", sorted(OLD_RUN_TARGETS))
def test_every_class_an_earlier_run_names_still_resolves(name):
    old = OLD_RUN_TARGETS[name]
    assert get_class(current_targets({"_target_": old})["_target_"]).__name__ == old.rpartition(".")[2]


def test_the_table_maps_only_paths_that_no_longer_import_to_ones_that_do():
    for old, new in LEGACY_TARGETS.items():
        module = old.rpartition(".")[0]
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(module)
        assert get_class(new).__name__ == old.rpartition(".")[2]


def test_an_old_run_config_is_read_with_current_class_paths(tmp_path):
    (tmp_path / "config.yaml").write_text(OLD_CONFIG)
    cfg = load_run_config(tmp_path)
    assert cfg.logger.mlflow._target_ == "gliograde.training.tracking.LocalMLFlowLogger"
    assert cfg.data._target_ == "gliograde.data.datamodule.GliomaDataModule"
    assert cfg.logger.mlflow.experiment_name == "train"  # interpolations survive the mapping
    callbacks = [instantiate(node) for node in cfg.callbacks.values()]
    assert isinstance(callbacks[0], SampleSlicesToTensorBoard) and callbacks[0].max_samples == 4
    assert isinstance(callbacks[1], TestConfusionMatrixToTensorBoard)
    assert OmegaConf.load(tmp_path / "config.yaml").callbacks.sample_slices._target_.startswith(
        "gliograde.callbacks."
    )  # the run's own record is left as it was written


@pytest.mark.slow
def test_a_run_trained_before_the_move_resumes_and_evaluates(tiny_cohort_master, tmp_path):
    """A run whose config.yaml names the old class paths resumes (its callbacks and loggers are
    built from that config) and is evaluated."""
    run = tmp_path / "run"
    common = ["trainer=cpu", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
              "trainer.limit_test_batches=2", "callbacks.progress_bar.refresh_rate=0"]
    result = run_python(
        "train.py", "data=brats2020", f"data.root={tiny_cohort_master}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.progress=false", "data.slices.k=4", "data.batch_size=8", "trainer.max_epochs=1",
        *common, f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = run / "config.yaml"
    text = config.read_text()
    for old, new in LEGACY_TARGETS.items():
        text = text.replace(new, old)
    assert "gliograde.callbacks.SampleSlicesToTensorBoard" in text
    config.write_text(text)
    last = run / "checkpoints" / "last.ckpt"
    result = run_python("train.py", f"hydra.run.dir={run}", f"ckpt_path={last}", "trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restoring states from the checkpoint" in result.stdout + result.stderr
    result = run_python("evaluate.py", f"run_dir={run}", "bootstrap=10", "gradcam_n=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "eval" / "test" / "metrics.json").is_file()
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)

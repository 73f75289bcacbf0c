"""Resuming trusts the run's saved config, not the command line; a run's records are never
overwritten by another experiment."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.cohorts import copy_patient
from helpers.commands import run_python
from omegaconf import OmegaConf

# trains a model in a `python train.py` subprocess
pytestmark = pytest.mark.slow


def _train(*args: str) -> subprocess.CompletedProcess:
    return run_python("train.py", *args, timeout=600)


@pytest.fixture(scope="module")
def trained_run(tiny_cohort_master, tmp_path_factory) -> Iterator[Path]:
    """One epoch of the strong setup on the BraTS 2020 preset, as a user would start it."""
    run = tmp_path_factory.mktemp("resume") / "run"
    result = _train(
        "experiment=strong",
        "data=brats2020",
        f"data.root={tiny_cohort_master}",
        f"data.cache_dir={run.parent / 'cache'}",
        "data.progress=false",
        "data.slices.k=4",
        "data.batch_size=8",
        "trainer=cpu",
        "trainer.max_epochs=1",  # debug=limit's batches, with last.ckpt to resume from
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    yield run
    shutil.rmtree(run.parent, ignore_errors=True)


def _records(run: Path) -> dict[str, str]:
    return {name: (run / name).read_text() for name in ("config.yaml", "splits.csv", "metrics.json")}


def test_readme_resume_command_continues_the_run_with_its_own_config(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # the other tests refuse to touch the original
    before = _records(run)
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 4
    # Only the README's keys plus a longer schedule and a different logger.
    result = _train(f"hydra.run.dir={run}", f"ckpt_path={last}", "trainer.max_epochs=2", "logger=csv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restoring states from the checkpoint" in result.stdout + result.stderr
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 8
    config = OmegaConf.load(run / "config.yaml")
    assert config.data.root == OmegaConf.load(trained_run / "config.yaml").data.root
    assert config.model.optimizer.lr == 0.0005 and config.data.augment.enabled  # experiment=strong
    assert config.trainer.max_epochs == 2 and "csv" in config.logger
    assert (run / "csv" / "metrics.csv").exists()
    assert _records(run)["splits.csv"] == before["splits.csv"]
    assert json.loads(_records(run)["metrics.json"])["test/patient_count"] == json.loads(
        before["metrics.json"]
    )["test/patient_count"]


@pytest.mark.parametrize(
    "override, line",
    [
        ("seed=7", "seed=7 differs from the resumed run's seed=42"),
        ("model=resnet34", "model.backbone=resnet34 differs from the resumed run's model.backbone=resnet18"),
        ("data.modalities=[flair]", "data.modalities=[flair] differs from the resumed run's "
         "data.modalities=[flair,t1ce,t1,t2]"),
        ("trainer.limit_train_batches=2", "trainer.limit_train_batches=2 differs from the resumed run's "
         "trainer.limit_train_batches=4"),
    ],
)
def test_resume_refuses_overrides_that_change_what_is_trained(trained_run, override, line):
    before = _records(trained_run)
    last = trained_run / "checkpoints" / "last.ckpt"
    result = _train(f"hydra.run.dir={trained_run}", f"ckpt_path={last}", override)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {line} ({trained_run / 'config.yaml'}): drop the override to resume, or start a new run "
        "in another hydra.run.dir"
    ]
    assert _records(trained_run) == before


def test_a_fresh_run_never_overwrites_another_runs_records(trained_run):
    before = _records(trained_run)
    hydra_copy = (trained_run / ".hydra" / "config.yaml").read_text()
    result = _train(f"hydra.run.dir={trained_run}", "trainer=cpu")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {trained_run} already holds a run (config.yaml): resume it with "
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}, or start a new run in another hydra.run.dir"
    ]
    assert _records(trained_run) == before
    assert (trained_run / ".hydra" / "config.yaml").read_text() == hydra_copy  # Hydra's own copy too


def test_a_checkpoint_is_resumed_only_in_its_own_run_directory(trained_run, tmp_path):
    elsewhere = tmp_path / "run"
    result = _train(f"hydra.run.dir={elsewhere}", f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}")
    assert result.returncode == 2
    assert f"{elsewhere} holds no config.yaml to resume from" in result.stderr
    assert not (elsewhere / "config.yaml").exists()


def test_a_checkpoint_from_another_directory_is_refused(trained_run, tmp_path):
    before = _records(trained_run)
    stray = tmp_path / "last.ckpt"
    stray.write_bytes((trained_run / "checkpoints" / "last.ckpt").read_bytes())
    result = _train(f"hydra.run.dir={trained_run}", f"ckpt_path={stray}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: ckpt_path={stray} is not in the run directory {trained_run}: resume a run in its own "
        "directory (hydra.run.dir=RUN ckpt_path=RUN/checkpoints/last.ckpt)"
    ]
    assert _records(trained_run) == before


def _checkpoints(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (run / "checkpoints").glob("*.ckpt")}


def test_a_resume_on_a_cohort_that_gained_a_patient_is_refused(trained_run, tiny_cohort_master, tmp_path):
    run, cohort = tmp_path / "run", tmp_path / "cohort"
    shutil.copytree(trained_run, run)
    shutil.copytree(tiny_cohort_master, cohort)  # the run's cohort, moved: its config follows it
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(f"root: {tiny_cohort_master}\n", f"root: {cohort}\n"))
    copy_patient(cohort, "BraTS20_Training_005", "BraTS20_Training_205")
    image = nib.load(cohort / "BraTS20_Training_205" / "BraTS20_Training_205_flair.nii")
    data = np.asarray(image.dataobj, dtype=np.float32) + 1  # another patient's images
    nib.save(nib.Nifti1Image(data, image.affine), image.get_filename())
    before, checkpoints = _records(run), _checkpoints(run)
    last = run / "checkpoints" / "last.ckpt"
    result = _train(f"hydra.run.dir={run}", f"ckpt_path={last}", "trainer.max_epochs=2")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {run / 'splits.csv'}: the cohort differs from the run's split: patients 1 added "
        "(e.g. BraTS20_Training_205); a resumed run keeps its patients and split: restore the cohort as it "
        "was, or start a new run"
    )
    assert "Traceback" not in result.stderr
    assert _records(run)["splits.csv"] == before["splits.csv"] and _checkpoints(run) == checkpoints


def test_resuming_a_finished_run_says_there_is_nothing_left_to_train(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before, checkpoints = _records(run), _checkpoints(run)
    last = run / "checkpoints" / "last.ckpt"
    result = _train(f"hydra.run.dir={run}", f"ckpt_path={last}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == (
        f"Nothing left to train: {last} has finished its run (its 1 epoch(s) reach trainer.max_epochs=1); "
        f"the outputs in {run} stay as they are. Raise trainer.max_epochs to train it further."
    )
    assert _records(run) == before and _checkpoints(run) == checkpoints


def test_a_resume_without_its_splits_is_refused_not_split_afresh(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "splits.csv").unlink()
    last = run / "checkpoints" / "last.ckpt"
    result = _train(f"hydra.run.dir={run}", f"ckpt_path={last}", "trainer.max_epochs=2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {run / 'splits.csv'}: missing, so the split {last} was trained on is unknown; "
        "restore it, or start a new run instead of resuming"
    )
    assert not (run / "splits.csv").exists()


def test_a_run_killed_before_its_test_resumes_to_test(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "metrics.json").unlink()  # fitted, then killed while testing
    last = run / "checkpoints" / "last.ckpt"
    result = _train(f"hydra.run.dir={run}", f"ckpt_path={last}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing left to train" not in result.stdout
    assert "test/patient_auroc" in json.loads((run / "metrics.json").read_text())


def test_a_run_whose_best_epoch_is_its_last_keeps_one_checkpoint_file(trained_run):
    from gliograde.clean import disk_usage

    folder = trained_run / "checkpoints"
    best, last = folder / "epoch_000.ckpt", folder / "last.ckpt"
    assert best.samefile(last)  # one epoch: the best is the last, one file under both names
    assert disk_usage(folder) < 1.2 * last.stat().st_size

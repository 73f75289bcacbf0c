"""The disk a run leaves: one checkpoint where one is enough (best and last alike, a sweep job, a
debug run), and `make clean` (python -m gliograde.clean) removing logs/ and outputs/ safely."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.commands import REPO, run_python
from helpers.configs import compose_config

from gliograde.training.checkpoint_io import AtomicCheckpointIO, share_if_same
from gliograde.clean import CleanError, clean, disk_usage, main
from gliograde.training.run_lock import RUN_LOCK, training_lock


def _checkpoint(path: Path, epoch: int, step: int, fill: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "global_step": step, "state_dict": {"w": torch.full((50_000,), fill)}}, path)
    return path


def test_best_and_last_of_the_same_epoch_become_one_file_and_stay_apart_once_training_goes_on(tmp_path):
    best = _checkpoint(tmp_path / "epoch_001.ckpt", 1, 8, 1.0)
    last = _checkpoint(tmp_path / "last.ckpt", 1, 8, 1.0)
    one = best.stat().st_size
    assert disk_usage(tmp_path) >= 2 * one
    assert share_if_same(best, last)
    assert best.samefile(last) and disk_usage(tmp_path) < 1.5 * one  # one file, two names
    assert not share_if_same(best, last)  # already one
    # a resumed run saves last.ckpt again: by rename, so the best checkpoint keeps its weights
    AtomicCheckpointIO().save_checkpoint({"epoch": 2, "global_step": 12, "state_dict": {}}, last)
    assert not best.samefile(last)
    assert torch.load(best, weights_only=False)["global_step"] == 8
    assert torch.load(last, weights_only=False)["global_step"] == 12
    assert not share_if_same(best, last)  # another epoch: both stay


def test_the_debug_runs_keep_only_their_best_checkpoint():
    for debug in ("limit", "overfit"):
        cfg = compose_config("train", [f"debug={debug}", "paths.output_dir=/tmp/run"])
        assert cfg.callbacks.last_checkpoint is None and cfg.callbacks.model_checkpoint is not None, debug
    assert compose_config("train", ["paths.output_dir=/tmp/run"]).callbacks.last_checkpoint is not None


def _repository(root: Path) -> Path:
    """A repository's outline with a run, a sweep and predictions, and a link out of logs/."""
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "train.yaml").write_text("seed: 1\n")
    run = root / "logs" / "train" / "runs" / "2026-12-01_10-00-00"
    best = _checkpoint(run / "checkpoints" / "epoch_000.ckpt", 0, 4, 1.0)
    os.link(best, run / "checkpoints" / "last.ckpt")
    (run / "metrics.json").write_text("{}")
    _checkpoint(
        root
        / "logs"
        / "train"
        / "multiruns"
        / "2026-12-01_11-00-00"
        / "0"
        / "checkpoints"
        / "epoch_000.ckpt",
        0,
        4,
        2.0,
    )
    (root / "outputs" / "predict" / "2026-12-01_12-00-00").mkdir(parents=True)
    (root / "outputs" / "predict" / "2026-12-01_12-00-00" / "predictions.csv").write_text("patient_id\n")
    outside = root.parent / "keep"
    outside.mkdir()
    (outside / "data.txt").write_text("not a run")
    (root / "logs" / "elsewhere").symlink_to(outside)
    (root / "data" / "cache").mkdir(parents=True)
    return run


def test_clean_says_what_it_would_remove_then_removes_only_logs_and_outputs(tmp_path, capsys):
    root = tmp_path / "repo"
    _repository(root)
    said = clean(root, remove=False).splitlines()
    assert said[0].startswith("Would remove ") and said[0].endswith(" in all:")
    assert said[1].startswith(f"  {root / 'logs'}/  ") and said[1].endswith(" kB (1 run, 1 sweep)")
    assert said[2].startswith(f"  {root / 'outputs'}/  ")
    assert 400 <= int(said[1].split()[1]) < 500  # two checkpoints of 200 kB and a link: counted once
    assert "make clean YES=1" in said[-1]
    assert (root / "logs").is_dir() and (root / "outputs").is_dir()  # nothing removed yet
    assert main(["--root", str(root), "--yes"]) == 0
    assert capsys.readouterr().out.startswith("Removed ")
    assert sorted(p.name for p in root.iterdir()) == ["conf", "data"]  # the cache is not a run's
    assert (tmp_path / "keep" / "data.txt").read_text() == "not a run"  # a link is not followed
    assert clean(root, remove=True).startswith("Nothing to remove")


def test_clean_refuses_while_a_training_writes_and_outside_the_repository(tmp_path, capsys):
    root = tmp_path / "repo"
    run = _repository(root)
    busy = f"a training is still writing in {run}; stop it or let it finish"
    with training_lock(run), pytest.raises(CleanError, match=busy):
        clean(root, remove=True)
    assert (run / "metrics.json").is_file() and (run / RUN_LOCK).is_file()
    assert "Removed" in clean(root, remove=True)  # the lock is released when the training ends

    linked = tmp_path / "linked"
    (linked / "conf").mkdir(parents=True)
    (linked / "conf" / "train.yaml").write_text("seed: 1\n")
    (linked / "logs").symlink_to(tmp_path / "keep")
    with pytest.raises(SystemExit) as refused:
        main(["--root", str(linked), "--yes"])
    assert refused.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"error: {linked / 'logs'}: a symbolic link to {tmp_path / 'keep'}; clean removes nothing"
    )
    assert (tmp_path / "keep" / "data.txt").is_file()
    with pytest.raises(CleanError, match="not the gliograde repository"):
        clean(tmp_path / "keep", remove=True)


@pytest.mark.slow  # a subprocess
def test_clean_needs_only_the_standard_library(tmp_path):
    root = tmp_path / "repo"
    _repository(root)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    # -S: no site-packages, as `make clean` runs before any install
    command = [sys.executable, "-S", "-m", "gliograde.clean", "--root", str(root)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Would remove") and (root / "logs").is_dir()


@pytest.mark.slow
def test_a_sweep_job_keeps_one_checkpoint(tiny_cohort_master, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_python(
        "train.py",
        "-m",
        "data=brats2020",
        f"data.root={tiny_cohort_master}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.slices.k=2",
        "data.batch_size=16",
        "data.progress=false",
        "data.preprocess.workers=1",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "callbacks.progress_bar.refresh_rate=0",
        "seed=0",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (kept,) = (sweep / "0" / "checkpoints").iterdir()
    assert kept.name.startswith("epoch_")  # no last.ckpt: a sweep job is never resumed
    assert "smaller than the logging interval" not in result.stderr

"""Cross-validation with its summary, DDP with gloo processes (alone and in a sweep), a run
killed with SIGKILL and resumed, determinism, and unwritable directories."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.commands import REPO, run_python

from gliograde.data.batches.samplers import EpochShuffleSampler, EpochWeightedSampler
from gliograde.data.synthetic.generator import generate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Iterator[dict[str, Path]]:
    base = tmp_path_factory.mktemp("scale")
    root = base / "cohort"
    generate_cohort(root, patients=36, seed=21, shape=(48, 48, 24), lgg_fraction=0.5)
    yield {"root": root, "cache": base / "cache"}
    shutil.rmtree(base, ignore_errors=True)


def _args(cohort: dict[str, Path]) -> list[str]:
    return [
        "data=brats2020",
        f"data.root={cohort['root']}",
        f"data.cache_dir={cohort['cache']}",
        "data.slices.k=5",
        "data.batch_size=16",
        "data.progress=false",
        "callbacks.progress_bar.refresh_rate=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
    ]


# Runs that are never resumed keep only their best checkpoint (ResNet18 + AdamW: 134 MB each).
NO_LAST = "callbacks.last_checkpoint=null"


def _train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_python("train.py", *args, timeout=timeout)


def _splits(run: Path) -> dict[str, str]:
    with open(run / "splits.csv", newline="") as fh:
        return {row["patient_id"]: row["split"] for row in csv.DictReader(fh)}


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_epoch_seeded_samplers():
    sampler = EpochShuffleSampler(50, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == sorted(second) == list(range(50)) and first != second
    sampler.set_epoch(0)
    assert list(sampler) == first  # a function of (seed, epoch) only
    weighted = EpochWeightedSampler(torch.tensor([0.0] * 10 + [1.0] * 10), seed=3)
    assert all(i >= 10 for i in weighted) and len(list(weighted)) == 20


@pytest.mark.slow
def test_three_fold_cross_validation_and_summary(cohort, tmp_path):
    sweep = tmp_path / "cv"
    result = _train(
        "-m", *_args(cohort), NO_LAST, "trainer=cpu", "data.folds=3", "data.fold=0,1,2",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [sweep / str(i) for i in range(3)]
    splits = [_splits(job) for job in jobs]
    tests = [{p for p, s in split.items() if s == "test"} for split in splits]
    vals = [{p for p, s in split.items() if s == "val"} for split in splits]
    assert tests[0] == tests[1] == tests[2]
    assert not (vals[0] & vals[1] or vals[0] & vals[2] or vals[1] & vals[2])
    assert set().union(*vals) == set(splits[0]) - tests[0]

    summary = run_python("-m", "gliograde.summarize", str(sweep), "--bootstrap", "100", timeout=300)
    assert summary.returncode == 0, summary.stderr
    assert "mean" in summary.stdout and "pooled out-of-fold" in summary.stdout
    data = json.loads((sweep / "cv_summary.json").read_text())
    assert data["n_folds"] == 3 and [f["fold"] for f in data["folds"]] == [0, 1, 2]
    aurocs = [_metrics(job)["val/patient_auroc"] for job in jobs]
    assert data["mean"]["val/patient_auroc"] == pytest.approx(sum(aurocs) / 3)
    assert data["pooled_val"]["n_patients"] == len(set().union(*vals))
    rows = list(csv.reader(open(sweep / "cv_summary.csv")))
    assert [r[0] for r in rows[1:]] == ["0", "1", "2", "mean", "std"]


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_counts_each_patient_once(cohort, tmp_path):
    run = tmp_path / "ddp"
    # 9 test patients x 5 slices = 45: a DistributedSampler over 2 ranks pads one repeated slice
    split = ["data.split.train=0.55", "data.split.val=0.2", "data.split.test=0.25"]
    result = _train(
        *_args(cohort),
        NO_LAST,
        *split,
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # one rank speaks: each line of the project's once, and no table of Lightning's
    for line in ("Seed set to 42", "sync_batchnorm needs GPUs", "Validating and testing the best checkpoint"):
        assert result.stdout.count(line) == 1, line
    assert result.stdout.count("Patient-level test metrics:") == 1 and "DataLoader 0" not in result.stdout
    for line in ("  Patient AUROC ", "  Threshold 0.500 on p(HGG)", "  Called: "):  # the headline, once
        assert result.stdout.count(line) == 1, line
    assert "smaller than the logging interval" not in result.stderr
    metrics = _metrics(run)
    splits = _splits(run)
    assert metrics["test/patient_count"] == sum(s == "test" for s in splits.values()) == 9
    assert metrics["val/patient_count"] == sum(s == "val" for s in splits.values())
    # the same checkpoint evaluated in one process gives the same patient-level figures
    single = run_python(
        "evaluate.py",
        f"run_dir={run}",
        "bootstrap=10",
        "gradcam_n=0",
        f"output_dir={tmp_path / 'eval'}",
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["n_patients"] == 9
    for name in ("auroc", "accuracy", "sensitivity", "specificity"):
        assert report["patient"][name]["value"] is not None, name  # both classes are among the test patients
        assert metrics[f"test/patient_{name}"] == pytest.approx(report["patient"][name]["value"], abs=1e-5)


@pytest.mark.slow
def test_ddp_inside_a_two_job_sweep(cohort, tmp_path):
    sweep, stray = tmp_path / "sweep", tmp_path / "stray"
    result = _train(
        "-m",
        *_args(cohort),
        NO_LAST,
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "model=resnet18,resnet34",
        f"hydra.sweep.dir={sweep}",
        f"hydra.run.dir={stray}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert not stray.exists()  # no rank wrote to a directory of its own
    assert result.stdout.count("Patient-level test metrics:") == 2  # each job once, by rank 0
    for job in ("0", "1"):
        metrics = _metrics(sweep / job)
        assert metrics["test/patient_count"] == sum(s == "test" for s in _splits(sweep / job).values())


def _resume_args(cohort, run: Path) -> list[str]:
    return [
        *_args(cohort),
        "trainer=cpu",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=3",
        f"hydra.run.dir={run}",
    ]


def _comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))}


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights after the last epoch (not the best checkpoint's)."""
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics_and_seeds_repeat(cohort, tmp_path):
    whole = tmp_path / "whole"
    assert _train(*_resume_args(cohort, whole)).returncode == 0
    again = tmp_path / "again"
    assert _train(*_resume_args(cohort, again)).returncode == 0
    assert _comparable(_metrics(whole)) == pytest.approx(_comparable(_metrics(again)), abs=1e-6)
    _assert_same_weights(_final_weights(whole), _final_weights(again))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "train.py", *_resume_args(cohort, killed)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    # last.ckpt appears (renamed into place whole) when epoch 0 ends: kill at once, mid-epoch 1
    while time.time() < deadline and proc.poll() is None and not last.exists():
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert not (killed / "metrics.json").exists()
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] < 9  # unfinished

    resumed = _train(*_resume_args(cohort, killed), f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 9
    )  # 3 epochs x 3 batches
    # epochs 1 and 2 were trained after the resume: the final weights show whether they repeat
    _assert_same_weights(_final_weights(killed), _final_weights(whole))
    assert _comparable(_metrics(killed)) == pytest.approx(_comparable(_metrics(whole)), abs=1e-6)


@pytest.mark.slow
def test_unwritable_run_or_cache_directory_is_one_clear_line(cohort, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    run_dir = _train(*_args(cohort), "trainer=cpu", f"hydra.run.dir={blocker / 'run'}", timeout=120)
    assert run_dir.returncode == 2
    assert run_dir.stderr.strip().splitlines() == [
        f"error: {blocker / 'run'}: cannot write the output directory (Not a directory); set hydra.run.dir=..."
    ]
    cache = _train(
        *[a for a in _args(cohort) if not a.startswith("data.cache_dir")],
        f"data.cache_dir={blocker / 'cache'}",
        "trainer=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=120,
    )
    assert cache.returncode == 2
    assert (
        cache.stderr.strip().splitlines()[-1]
        == f"error: {blocker / 'cache'}: cannot create cache directory (Not a directory)"
    )

"""End to end: ``python train.py task=segment`` on a tiny cohort, the segmenter it leaves, and
the commands that must refuse it; segment() of one full-size patient, timed."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from helpers.commands import run_python
from helpers.runs import tiny_run, tiny_train_args

from gliograde.data.synthetic.generator import generate_cohort
from gliograde.segmentation.datamodule import SegmentationDataModule
from gliograde.segmentation.inference import Segmenter, open_segmenter
from gliograde.segmentation.volume import SegmenterError
from gliograde.segmentation.metrics import dice
from gliograde.segmentation.network import PaddedUNet

pytestmark = pytest.mark.slow

SEGMENT = ("task=segment", "data.split.train=0.5", "data.split.val=0.25", "data.split.test=0.25")


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """A segmenter trained for 5 epochs on 12 patients of 40x40x20 (about 40 s on 2 cores)."""
    base = tmp_path_factory.mktemp("seg_run")
    paths = {"cohort": base / "cohort", "cache": base / "cache", "run": base / "run"}
    generate_cohort(
        paths["cohort"], patients=12, seed=7, shape=(40, 40, 20), lgg_fraction=0.5, compress=False
    )
    result = run_python(
        *tiny_train_args(paths, *SEGMENT, "trainer.max_epochs=5", f"hydra.run.dir={paths['run']}")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    paths["stdout"] = result.stdout
    return paths


def _one_line_exit_2(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


def test_train_task_segment_writes_a_complete_run(seg_run):
    run = seg_run["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test/patient_dice", "test/patient_dice_min", "val/patient_dice", "train/loss", "val/loss"):
        assert key in metrics
    assert metrics["test/patient_dice_min"] <= metrics["test/patient_dice"] <= 1
    assert "test/patient_dice" in seg_run["stdout"]
    splits = (run / "splits.csv").read_text()
    assert splits.count("\n") == 13 and "test" in splits
    assert len(list((run / "checkpoints").glob("epoch_*.ckpt"))) == 1
    assert (run / "dice_test.csv").is_file()
    from omegaconf import OmegaConf

    config = OmegaConf.load(run / "config.yaml")
    assert config.task == "segment" and config.input_contract.kind == "segmenter"
    assert list(config.input_contract.classes) == ["background", "tumour"]
    assert config.input_contract.target.name == "whole tumour"
    assert list(config.input_contract.target.labels) == [1, 2, 4]


def test_the_trained_segmenter_finds_the_tumours_of_its_test_patients(seg_run):
    segmenter = open_segmenter(seg_run["run"], device="cpu")
    metrics = json.loads((seg_run["run"] / "metrics.json").read_text())
    assert segmenter.test_dice == pytest.approx(metrics["test/patient_dice"])
    datamodule = SegmentationDataModule(
        root=seg_run["cohort"],
        cache_dir=seg_run["cache"],
        progress=False,
        preprocess={"workers": 1},
        slices={"strategy": "brain", "min_brain_fraction": 0.01},
    )
    datamodule.prepare_data()
    datamodule.setup()
    cached = datamodule.cached
    tests = [
        line.split(",")[0]
        for line in (seg_run["run"] / "splits.csv").read_text().splitlines()
        if ",test" in line
    ]
    scores = []
    for patient in tests:
        position = cached.position(patient)
        truth = datamodule.masks.volume(int(cached.slots[position]))
        found = segmenter.segment(cached.volume(position), cached.modalities)
        assert found.shape == truth.shape and found.dtype == bool
        counts = torch.tensor([[np.sum(found & truth), np.sum(found & ~truth), np.sum(~found & truth)]])
        scores.append(float(dice(counts)[0]))
    # Chance (every brain voxel called tumour) is below 0.2 on these tumours.
    assert np.mean(scores) > 0.5, scores


@pytest.mark.parametrize(
    "command",
    [
        ("evaluate.py", "run_dir={run}"),
        ("predict.py", "ckpt={run}", "input={cohort}"),
        ("-m", "gliograde.export", "{run}"),
    ],
)
def test_classifier_commands_refuse_a_segmenter_run_in_one_line(seg_run, command):
    argv = [part.format(run=seg_run["run"], cohort=seg_run["cohort"]) for part in command]
    line = _one_line_exit_2(run_python(*argv))
    assert (
        f"{seg_run['run']} is a segmenter run (task=segment)" in line
        and f"segmenter={seg_run['run']}" in line
    )


def test_task_segment_on_a_cohort_without_masks_is_refused_before_the_cache(seg_run, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(seg_run["cohort"], cohort)
    for mask in cohort.glob("*/*_seg.nii"):
        mask.unlink()
    paths = {"cohort": cohort, "cache": tmp_path / "cache"}
    line = _one_line_exit_2(
        run_python(*tiny_train_args(paths, *SEGMENT, f"hydra.run.dir={tmp_path / 'run'}"))
    )
    assert "BraTS20_Training_001" in line and "BraTS20_Training_001_seg" in line and "no tumour mask" in line
    assert not (tmp_path / "cache").exists() or not any(
        p.name != ".lock" for p in (tmp_path / "cache").iterdir()
    )
    assert not (tmp_path / "run").exists()


def test_open_segmenter_refuses_a_classifier_run(tmp_path_factory):
    classifier = tiny_run(tmp_path_factory)["run"]
    with pytest.raises(SegmenterError) as err:
        open_segmenter(classifier)
    assert f"{classifier} is a classifier (task=classify)" in str(err.value)
    with pytest.raises(SegmenterError, match="is a classifier"):
        open_segmenter(next((classifier / "checkpoints").glob("epoch_*.ckpt")))


def test_segmenting_one_full_size_patient_on_the_cpu_is_quick():
    """The default network (model=unet) on one 240x240x155 patient: the figure the README quotes."""
    torch.set_num_threads(2)
    network = PaddedUNet(4, (8, 16, 32, 64, 128, 8)).eval()
    segmenter = Segmenter(
        path=None,
        contract={"kind": "segmenter", "modalities": ["flair", "t1ce", "t1", "t2"]},
        test_dice=None,
        network=network,
    )
    rng = np.random.default_rng(0)
    volume = np.zeros((155, 4, 240, 240), dtype=np.float16)
    volume[13:143, :, 30:210, 45:195] = rng.standard_normal((130, 4, 180, 150)).astype(np.float16)
    stored = ["flair", "t1", "t1ce", "t2"]
    start, cpu = time.perf_counter(), time.process_time()
    mask = segmenter.segment(volume, stored)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    print(
        f"segment() of one 240x240x155 patient (130 brain slices): {seconds:.2f} s, {cpu_seconds:.1f} CPU-s"
    )
    assert mask.shape == (155, 240, 240) and not mask[:13].any()
    # CPU time, not wall time: other jobs on a shared machine slow the clock, not the work.
    # 30 CPU-seconds is 15 s on 2 idle cores (measured: about 4.5 s, 9 CPU-s).
    assert cpu_seconds < 30

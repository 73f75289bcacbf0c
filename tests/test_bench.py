"""Benchmark CLI on a tiny cohort, and the fast paths it measures against plain references."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmarks.bench import KEYS
from helpers.cohorts import make_datamodule
from helpers.commands import REPO

from gliograde.data.caching.preprocess import normalise_into
from gliograde.data.discovery.specs import MODALITIES


@pytest.mark.slow
def test_bench_writes_every_key_on_a_tiny_cohort(tmp_path):
    out = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "benchmarks.bench", "--out", str(out), "--workdir", str(tmp_path),
        "--patients", "4", "--shape", "40", "40", "20", "--batch-size", "8", "--train-batch-size", "4",
        "--warmup-steps", "1", "--train-steps", "2", "--rss-steps", "1", "--repeats", "1",
        "--article-slices", "2",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert list(results) == list(KEYS)
    for key, value in results.items():
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    for key in KEYS:  # the table names every figure, and says whether each target is met
        assert key in done.stdout
    assert done.stdout.count("PASS") + done.stdout.count("FAIL") == 10
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # cohorts and caches removed


def _reference(volume: np.ndarray, clip=None) -> np.ndarray:
    """Straightforward z-score over the nonzero voxels, background 0, in float64."""
    brain = volume != 0
    values = volume[brain].astype(np.float64)
    scaled = volume.astype(np.float64)
    if clip is not None:
        low, high = np.percentile(values, clip)
        values = np.clip(values, low, high)
        scaled = np.clip(scaled, low, high)
    result = (scaled - values.mean()) / values.std()
    result[~brain] = 0
    return result


def _brain_volume(rng, shape=(30, 40, 50), dtype=np.int16) -> np.ndarray:
    z, y, x = np.indices(shape)
    inside = ((z - 14) / 11) ** 2 + ((y - 21) / 15) ** 2 + ((x - 24) / 19) ** 2 < 1
    values = rng.normal(600, 150, size=shape).clip(1, None)
    return np.where(inside, values, 0).astype(dtype)


@pytest.mark.parametrize("clip", [None, (1.0, 99.0)])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("out_is_zero", [True, False])
def test_normalise_matches_a_plain_zscore_within_float16(clip, dtype, out_is_zero):
    volume = _brain_volume(np.random.default_rng(0), dtype=dtype)
    cache = np.zeros((volume.shape[0], 4) + volume.shape[1:], dtype=np.float16)
    if not out_is_zero:
        cache[:] = 7  # a reused buffer: every voxel must be rewritten
    nonzero = normalise_into(volume, cache[:, 2], "P", Path("p.nii"), clip, out_is_zero=out_is_zero)
    expected = _reference(volume, clip)
    got = cache[:, 2].astype(np.float64)
    np.testing.assert_array_equal(nonzero, volume != 0)
    assert np.all(got[volume == 0] == 0)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)  # float16 has 11 bits
    assert np.all(cache[:, [0, 1, 3]] == (0 if out_is_zero else 7))  # other channels untouched


def test_float32_delivery_equals_the_cache(tiny_cohort_master, tmp_path):
    dm = make_datamodule(tiny_cohort_master, tmp_path / "cache", transfer_dtype="float32")
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.float32
    channels = [MODALITIES.index(m) for m in dm.modalities]
    for i, position in enumerate(batch["patient"].tolist()):
        expected = dm.cached.volume(position)[int(batch["slice_index"][i])][channels].astype(np.float32)
        np.testing.assert_array_equal(batch["image"][i].numpy(), expected)


@pytest.mark.slow  # a few seconds: kept out of the fast suite's 90 s
def test_the_monai_peer_serves_our_slices_in_float32(tiny_cohort_master, tmp_path):
    """The peer reads what the loader reads (its ratio compares like with like), batched by MONAI."""
    from benchmarks.loader_profile import full_grid_dataset, loader_over, monai_peer_loader

    dm = make_datamodule(tiny_cohort_master, tmp_path / "cache", slices={"strategy": "brain"})
    dm.prepare_data()
    dm.setup()
    ours, peer = dm.datasets["train"], monai_peer_loader(dm, batch_size=8)
    assert len(peer.dataset) == len(ours) > 8
    for i in (0, len(ours) // 2, len(ours) - 1):
        item = peer.dataset[i]
        assert item["image"].dtype == torch.float32 and int(item["label"]) == int(ours.labels[i])
        assert torch.equal(item["image"], ours.batch([i])["image"][0].float())
    batch = next(iter(peer))
    assert batch["image"].shape == (8, *ours.batch([0])["image"].shape[1:])
    # The full-grid twin: the same rows from a cache of the whole grid, bit for bit.
    from gliograde.data.caching.cache import open_or_build
    from gliograde.data.discovery.cohort import discover_cohort
    from gliograde.data.discovery.specs import LabelSpec, LayoutSpec, PreprocessSpec

    records = discover_cohort(tiny_cohort_master, LayoutSpec(), LabelSpec(), True).patients
    spec, labels = PreprocessSpec(workers=1), LayoutSpec().mask_labels
    full = full_grid_dataset(ours, open_or_build(records, tmp_path / "full", spec, labels, progress=False, box_margin=None))
    rows = list(range(len(ours)))
    assert torch.equal(full.batch(rows)["image"].view(torch.int16), ours.batch(rows)["image"].view(torch.int16))
    assert len(list(loader_over(full, 8))) == len(ours) // 8

"""data.device_cache: the same batches as the DataLoader, a shard per DDP rank, a refusal when the
copy would not fit, and the same metrics end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.cohorts import make_datamodule
from helpers.commands import run_python
from torch.utils.data import DistributedSampler

from gliograde.data.batches import device_cache
from gliograde.data.batches.device_cache import DeviceBatches
from gliograde.data.synthetic.generator import generate_cohort
from gliograde.errors import ConfigError


def _ready(root, cache, **overrides):
    dm = make_datamodule(root, cache, **overrides)
    dm.prepare_data()
    dm.setup()
    return dm


def _set_epoch(loader, epoch: int) -> None:
    """What Lightning does before each epoch, for a DataLoader and for any iterable."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def _assert_same_batches(expected, got) -> None:
    assert len(expected) == len(got)
    for want, have in zip(expected, got, strict=True):
        assert want.keys() == have.keys()
        assert want["image"].dtype == have["image"].dtype
        for key in ("image", "label", "patient", "slice_index"):
            torch.testing.assert_close(have[key], want[key], rtol=0, atol=0)
        assert have["patient_id"] == want["patient_id"]


@pytest.mark.parametrize("sampler", ["random", "weighted"])
def test_train_and_val_batches_are_the_loaders_index_for_index(tiny_cohort_master, tmp_path, sampler):
    options = dict(batch_size=5, sampler=sampler, seed=4)
    plain = _ready(tiny_cohort_master, tmp_path / "cache", **options)
    cached = _ready(tiny_cohort_master, tmp_path / "cache", device_cache=True, **options)
    train = cached.train_dataloader()
    assert isinstance(train, DeviceBatches)
    loader = plain.train_dataloader()
    assert len(train) == len(loader) and train.drop_last
    for epoch in (0, 1, 3):
        _set_epoch(loader, epoch)
        _set_epoch(train, epoch)
        _assert_same_batches(list(loader), list(train))
    _assert_same_batches(list(plain.val_dataloader()), list(cached.val_dataloader()))
    # One copy per split per run: asking again reuses it; test and predict keep the DataLoader.
    assert cached.train_dataloader().slices is train.slices
    assert not isinstance(cached.test_dataloader(), DeviceBatches)
    assert not isinstance(cached.predict_dataloader(), DeviceBatches)
    cached.teardown("fit")
    assert cached.train_dataloader().slices is not train.slices


def test_each_ddp_rank_holds_only_its_distributed_sampler_shard(tiny_cohort_master, tmp_path):
    dm = _ready(tiny_cohort_master, tmp_path / "cache", device_cache=True, batch_size=3)
    size = len(dm.datasets["train"])
    held = {}
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(
            strategy=SimpleNamespace(root_device=torch.device("cpu")),
            world_size=2,
            global_rank=rank,
            overfit_batches=0,
        )
        dm.teardown("fit")
        batches = dm.train_dataloader()
        rows = list(DistributedSampler(range(size), num_replicas=2, rank=rank, shuffle=False))
        assert len(batches.slices) == len(rows) < size
        expected = dm.datasets["train"].batch(rows)
        torch.testing.assert_close(batches.slices.image, expected["image"], rtol=0, atol=0)
        seen = torch.cat([b["slice_index"] * 1000 + b["patient"] for b in batches])
        held[rank] = set(seen.tolist())
        assert held[rank] <= set((expected["slice_index"] * 1000 + expected["patient"]).tolist())
    dataset = dm.datasets["train"]
    everything = set((dataset.slice_indices * 1000 + dataset.patient_positions).tolist())
    # drop_last leaves at most a batch per rank out
    assert len(everything - held[0] - held[1]) <= 2 * 3


def test_overfitting_batches_come_in_order_as_lightning_makes_the_loaders(tiny_cohort_master, tmp_path):
    dm = _ready(tiny_cohort_master, tmp_path / "cache", device_cache=True, batch_size=4)
    cpu = SimpleNamespace(root_device=torch.device("cpu"))
    dm.trainer = SimpleNamespace(strategy=cpu, world_size=1, global_rank=0, overfit_batches=2)
    batches = list(dm.train_dataloader())
    expected = dm.datasets["train"].batch(range(4 * len(batches)))
    torch.testing.assert_close(torch.cat([b["slice_index"] for b in batches]), expected["slice_index"])
    torch.testing.assert_close(torch.cat([b["patient"] for b in batches]), expected["patient"])


def test_device_cache_must_be_a_boolean(tiny_cohort_master, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.device_cache='yes' must be true or false"):
        make_datamodule(tiny_cohort_master, tmp_path / "cache", device_cache="yes")


def test_a_copy_that_would_not_fit_is_refused_with_the_estimate_and_the_free_memory(
    tiny_cohort_master, tmp_path, monkeypatch
):
    dm = _ready(tiny_cohort_master, tmp_path / "cache", device_cache=True)
    rows = len(dm.datasets["train"])
    needed, shape, dtype = device_cache.estimate_bytes(dm.datasets["train"], rows)
    assert dtype == torch.float16 and needed == rows * (int(np.prod(shape)) * 2 + 24)
    monkeypatch.setattr(device_cache, "free_bytes", lambda device: needed - 1)
    with pytest.raises(ConfigError, match=r"data\.device_cache=true: the train split's \d+ slices need about "
                       r"[0-9.]+ GiB on cpu, but only [0-9.]+ GiB is free"):  # fmt: skip
        dm.train_dataloader()
    monkeypatch.setattr(device_cache, "free_bytes", lambda device: needed)
    assert len(dm.train_dataloader().slices) == rows


def test_free_memory_of_the_host_is_known():
    free = device_cache.free_bytes(torch.device("cpu"))
    assert free is not None and free > 0


@pytest.mark.slow
def test_a_training_run_gives_the_same_metrics_with_and_without_the_device_cache(tmp_path):
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, patients=12, seed=5, shape=(40, 40, 20), lgg_fraction=0.5, compress=False)
    metrics = {}
    for cache_on in (False, True):
        run = tmp_path / f"run-{cache_on}"
        result = run_python(
            "train.py",
            "data=brats2020",
            f"data.root={cohort}",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"data.device_cache={str(cache_on).lower()}",
            "data.slices.k=4",
            "data.batch_size=6",
            "data.progress=false",
            "data.preprocess.workers=1",
            "data.augment.enabled=true",
            "data.split.train=0.5",
            "data.split.val=0.25",
            "data.split.test=0.25",
            "trainer=cpu",
            "trainer.max_epochs=2",
            "callbacks.progress_bar.refresh_rate=0",
            f"hydra.run.dir={run}",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        metrics[cache_on] = json.loads((run / "metrics.json").read_text())
        assert f"device_cache: {str(cache_on).lower()}" in (run / "config.yaml").read_text()
    assert len(metrics[True]) > 5 and metrics[False] == metrics[True]

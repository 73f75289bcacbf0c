"""DataModule: batches, channel order, planes, samplers, class weights, augmentation."""

from __future__ import annotations

import csv
import multiprocessing

import pytorch_lightning as pl
import numpy as np
import pytest
import torch
from helpers.cohorts import TINY_SHAPE, make_datamodule

from gliograde.data.discovery.specs import MODALITIES


@pytest.fixture
def ready(tiny_cohort_master, tmp_path):
    def build(**overrides):
        dm = make_datamodule(tiny_cohort_master, tmp_path / "cache", **overrides)
        dm.prepare_data()
        dm.setup()
        return dm

    return build


def _grades(root):
    with open(root / "name_mapping.csv", newline="") as fh:
        return {row["BraTS_2020_subject_ID"]: row["Grade"] for row in csv.DictReader(fh)}


def test_batches_carry_image_label_patient_and_slice(ready, tiny_cohort_master):
    dm = ready(modalities=["flair", "t1ce", "t1", "t2"])
    batch = next(iter(dm.train_dataloader()))
    x, y, _ = TINY_SHAPE
    # float16 is the default transfer dtype (the cache's own); the device hook casts to float32.
    assert batch["image"].shape == (8, 4, y, x) and batch["image"].dtype == torch.float16
    assert batch["label"].dtype == torch.int64 and batch["slice_index"].dtype == torch.int64
    grades = _grades(tiny_cohort_master)
    for i, patient_id in enumerate(batch["patient_id"]):
        assert dm.classes[batch["label"][i]] == grades[patient_id]
        position = dm.cached.position(patient_id)
        assert batch["patient"][i] == position
        z = int(batch["slice_index"][i])
        for c, modality in enumerate(dm.modalities):
            expected = dm.cached.volume(position)[z, MODALITIES.index(modality)].astype(np.float32)
            np.testing.assert_array_equal(batch["image"][i, c].numpy(), expected)


def test_tumour_topk_slices_contain_tumour(ready):
    dm = ready(slices={"strategy": "tumor_topk", "k": 3})
    for p in dm.patients:
        area = dm.cached.tumour_area["axial"][p.position]
        assert len(p.slices) <= 3 and np.all(area[p.slices] > 0)
        assert area[p.slices].min() >= np.sort(area)[-len(p.slices)]


def test_every_patient_in_exactly_one_split_with_its_label(ready, tiny_cohort_master, tmp_path):
    dm = ready()
    table = dm.split_table()
    assert len(table) == 24 and len({pid for pid, _, _ in table}) == 24
    assert {s for _, _, s in table} == {"train", "val", "test"}
    grades = _grades(tiny_cohort_master)
    assert all(grades[pid] == label for pid, label, _ in table)
    seen = {}
    for split in ("train", "val", "test"):
        for position in set(dm.datasets[split].patient_positions.tolist()):
            assert position not in seen
            seen[position] = split
    dm.write_splits(tmp_path / "splits.csv")
    rows = list(csv.DictReader(open(tmp_path / "splits.csv")))
    assert sorted((r["patient_id"], r["label"], r["split"]) for r in rows) == sorted(table)


@pytest.mark.parametrize("plane, shape", [("coronal", (20, 40)), ("sagittal", (20, 40))])
def test_other_planes(ready, plane, shape):
    dm = ready(slices={"strategy": "tumor_topk", "k": 2, "plane": plane}, modalities=["t2"])
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape[1:] == (1, *shape)
    volume = dm.cached.volume(int(batch["patient"][0]))
    i = int(batch["slice_index"][0])
    t2 = MODALITIES.index("t2")
    expected = volume[:, t2, i, :] if plane == "coronal" else volume[:, t2, :, i]
    np.testing.assert_array_equal(batch["image"][0, 0].numpy(), expected.astype(np.float32))


def test_class_weights_and_weighted_sampler_balance_classes(ready):
    dm = ready(sampler="weighted", slices={"strategy": "brain"}, batch_size=16)
    counts = dm.class_counts("train")
    assert counts[0] < counts[1]  # LGG is the minority
    weights = dm.class_weights
    assert torch.allclose(weights, torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32))
    drawn = torch.cat([b["label"] for _ in range(5) for b in dm.train_dataloader()])
    assert abs(drawn.float().mean().item() - 0.5) < 0.08


def test_train_order_is_seeded(ready):
    first = [b["slice_index"].tolist() for b in ready(seed=5).train_dataloader()]
    again = [b["slice_index"].tolist() for b in ready(seed=5).train_dataloader()]
    assert first == again


def test_num_workers_builds_the_same_batches_in_the_main_process(ready, caplog):
    serial = ready()
    workers = ready(num_workers=2, persistent_workers=True)
    with caplog.at_level("INFO", logger="gliograde.data.datamodule"):
        loader = workers.train_dataloader()
        assert loader.num_workers == 0 and not loader.persistent_workers
        a = [b["image"] for b in serial.val_dataloader()]
        b = [b["image"] for b in workers.val_dataloader()]
    assert not multiprocessing.active_children()
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    said = [r.getMessage() for r in caplog.records if "num_workers=2" in r.getMessage()]
    assert len(said) == 1 and "built in the main process" in said[0]  # said once, not per loader


def test_float16_transfer_is_cast_back_on_the_device(ready):
    dm = ready(transfer_dtype="float16")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].dtype == torch.float16
    moved = dm.on_after_batch_transfer(batch, 0)
    assert moved["image"].dtype == torch.float32


class _Recorder(pl.LightningModule):
    """Records what each stage's batches look like after the DataModule's device hook."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen = {"train": [], "val": []}

    def _record(self, stage, batch):
        self.seen[stage].append({k: batch[k].cpu() for k in ("image", "patient", "slice_index")})

    def training_step(self, batch, batch_idx):
        self._record("train", batch)
        return self.layer(batch["image"].mean().reshape(1, 1)).sum()

    def validation_step(self, batch, batch_idx):
        self._record("val", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_augmentation_changes_training_batches_only(ready):
    dm = ready(augment={"enabled": True, "prob": 1.0})
    module = _Recorder()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    channels = [MODALITIES.index(m) for m in dm.modalities]

    def raw(record, i):
        volume = dm.cached.volume(int(record["patient"][i]))
        return torch.from_numpy(volume[int(record["slice_index"][i])][channels].astype(np.float32))

    assert module.seen["train"]
    for record in module.seen["train"]:
        for i in range(len(record["image"])):
            image = record["image"][i]
            assert not torch.equal(image, raw(record, i))
            assert torch.isfinite(image).all()
            # intensity shifts must not paint the air: background stays exactly zero
            assert (image == 0).all(0).float().mean() > 0.2
    assert module.seen["val"]
    for record in module.seen["val"]:
        for i in range(len(record["image"])):
            assert torch.equal(record["image"][i], raw(record, i))


def test_synthetic_cohort_is_generated_once_and_guarded(tmp_path):
    root = tmp_path / "synthetic"
    spec = {"patients": 12, "seed": 1, "shape": [32, 32, 16], "lgg_fraction": 0.34}
    dm = make_datamodule(root, tmp_path / "cache", synthetic=spec)
    dm.prepare_data()
    assert len(dm.cached.patient_ids) == 12
    stamp = (root / ".synthetic.json").stat().st_mtime_ns
    again = make_datamodule(root, tmp_path / "cache", synthetic=spec)
    again.prepare_data()
    assert (root / ".synthetic.json").stat().st_mtime_ns == stamp
    assert again.cached.directory == dm.cached.directory
    with pytest.raises(ValueError, match="holds a synthetic cohort generated with patients=12.*data.synthetic.patients=12.*delete"):
        make_datamodule(root, tmp_path / "cache", synthetic={**spec, "patients": 20}).prepare_data()

"""The DataModule's pieces: one source of defaults, a torch-free prepared cohort, public batches."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from helpers.cohorts import make_datamodule
from helpers.commands import REPO
from omegaconf import OmegaConf

from gliograde.data.datamodule import GliomaDataModule
from gliograde.data.pipeline.options import DataOptions
from gliograde.data.pipeline.prepared import PreparedCohort

PRESET = REPO / "conf" / "data" / "brats2020.yaml"


def test_datamodule_and_options_take_the_same_arguments_and_defaults():
    module = inspect.signature(GliomaDataModule.__init__).parameters
    options = inspect.signature(DataOptions.__init__).parameters
    assert list(module) == list(options)
    for name, parameter in module.items():
        assert parameter.default == options[name].default, name
        assert parameter.annotation == options[name].annotation, name


def test_signature_defaults_are_the_preset_values():
    preset = OmegaConf.load(PRESET)
    # The seeds follow the top-level ``seed`` of each command (train 42, evaluate 0): not data defaults.
    assert OmegaConf.is_interpolation(preset, "seed") and OmegaConf.is_interpolation(preset.split, "seed")
    values = OmegaConf.to_container(preset, resolve=False)
    values.pop("_target_")
    values.pop("root")
    values.pop("seed")
    values["split"].pop("seed")
    from_preset = vars(DataOptions(root="x", **values))
    from_defaults = vars(DataOptions(root="x"))
    assert from_preset == from_defaults
    expected = set(inspect.signature(DataOptions.__init__).parameters) - {"self", "root", "seed"}
    assert expected <= set(values), "every argument has its value in the preset"


def test_prepared_cohort_alone_matches_the_datamodule(tiny_cohort_master, tmp_path):
    dm = make_datamodule(tiny_cohort_master, tmp_path / "cache")
    dm.setup()
    prepared = PreparedCohort(dm.options)
    prepared.select()
    assert prepared.assignment == dm.assignment
    assert [(p.patient_id, p.label, p.slices.tolist()) for p in prepared.patients] == [
        (p.patient_id, p.label, p.slices.tolist()) for p in dm.patients
    ]
    assert len(dm.skipped) == len(prepared.skipped) == 0


def test_dataset_batch_is_the_loaders_batch(tiny_cohort_master, tmp_path):
    dm = make_datamodule(tiny_cohort_master, tmp_path / "cache", batch_size=5)
    dm.setup()
    dataset = dm.datasets["val"]
    from_loader = next(iter(dm.val_dataloader()))
    batch = dataset.batch(list(range(5)))
    assert torch.equal(batch["image"], from_loader["image"])
    assert batch["patient_id"] == from_loader["patient_id"]
    single = dataset[3]
    assert torch.equal(single["image"], batch["image"][3]) and single["patient_id"] == batch["patient_id"][3]
    assert batch["image"].shape == (5, 4, 40, 40) and np.all(batch["label"].numpy() >= 0)


def test_preset_file_is_the_one_the_datamodule_names():
    assert OmegaConf.load(PRESET)["_target_"] == f"{GliomaDataModule.__module__}.{GliomaDataModule.__name__}"

"""Shared fixtures: a tiny synthetic cohort in the BraTS 2020 layout, made once per session, and
configs composed from conf/ as the entry points compose them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers.cohorts import TINY_SHAPE
from helpers.configs import compose_config
from omegaconf import DictConfig, OmegaConf

from gliograde.data.synthetic.generator import generate_cohort


@pytest.fixture(scope="session")
def tiny_cohort_master(tmp_path_factory) -> Path:
    """24 patients (8 LGG) of 40x40x20 voxels; never modified (copy it to change files)."""
    root = tmp_path_factory.mktemp("cohorts") / "tiny"
    # Uncompressed: tests rewrite and corrupt these files by their .nii names.
    generate_cohort(root, patients=24, seed=3, shape=TINY_SHAPE, lgg_fraction=1 / 3, compress=False)
    return root


@pytest.fixture
def tiny_cohort(tiny_cohort_master, tmp_path) -> Path:
    """A private, writable copy of the tiny cohort."""
    root = tmp_path / "cohort"
    shutil.copytree(tiny_cohort_master, root)
    return root


@pytest.fixture
def cfg_train(tmp_path) -> DictConfig:
    """``train.yaml`` on the synthetic preset, resolved, with its outputs and cache under tmp_path."""
    outputs = [f"paths.output_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"]
    cfg = compose_config("train", [*outputs, "data.progress=false"])
    OmegaConf.resolve(cfg)
    return cfg


"""hydra/launcher=parallel: two sweep jobs at once, each in its own directory, one shared cache."""

from __future__ import annotations

import json

import pytest
from helpers.commands import run_python
from helpers.runs import debug_sweep_args
from omegaconf import OmegaConf

from gliograde.data.synthetic.generator import generate_cohort

pytestmark = pytest.mark.slow


def test_two_concurrent_jobs_finish_with_their_own_metrics_and_build_the_cache_once(tmp_path):
    cohort, cache, sweep = tmp_path / "cohort", tmp_path / "cache", tmp_path / "sweep"
    generate_cohort(cohort, patients=16, seed=11, shape=(40, 40, 20), lgg_fraction=0.5)
    result = run_python(
        *debug_sweep_args(
            cache,  # empty: both jobs start by wanting to build it
            sweep,
            f"data.root={cohort}",
            "hydra/launcher=parallel",
            "hydra.launcher.n_jobs=2",
            "model.optimizer.lr=0.001,0.0003",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]
    rates = [OmegaConf.load(job / "config.yaml").model.optimizer.lr for job in jobs]
    assert rates == [0.001, 0.0003]
    for job in jobs:
        assert "test/patient_count" in json.loads((job / "metrics.json").read_text())
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1

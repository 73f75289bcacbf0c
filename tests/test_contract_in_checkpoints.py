"""Every checkpoint carries the input contract, weights-only checkpoints included."""

from __future__ import annotations

import pytest
import torch
from helpers.commands import run_python

from gliograde.data.synthetic.generator import generate_cohort

pytestmark = pytest.mark.slow


def test_weights_only_checkpoints_keep_the_contract(tmp_path):
    cohort, run = tmp_path / "cohort", tmp_path / "run"
    generate_cohort(cohort, patients=12, seed=4, shape=(40, 40, 20), lgg_fraction=0.5)
    result = run_python(
        "train.py",
        "data=brats2020",
        f"data.root={cohort}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.slices.k=3",
        "data.progress=false",
        "data.split.train=0.5",
        "data.split.val=0.25",
        "data.split.test=0.25",
        "data.modalities=[t2,flair]",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "+callbacks.model_checkpoint.save_weights_only=true",
        "callbacks.last_checkpoint=null",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [best] = (run / "checkpoints").glob("epoch_*.ckpt")
    stored = torch.load(best, map_location="cpu", weights_only=False)
    assert "optimizer_states" not in stored  # weights only
    assert stored["input_contract"]["modalities"] == ["t2", "flair"]

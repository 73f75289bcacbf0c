"""The ``data=synthetic`` preset end to end: it generates the cohort its settings describe, trains
on one made by ``python -m gliograde.synthetic`` with the overrides that command prints, and
refuses a cohort made with other settings, naming the override that would select it."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from helpers.configs import compose_config
from omegaconf import OmegaConf

from gliograde import synthetic as cli
from gliograde.config.compose import build
from gliograde.data.synthetic.settings import DEFAULT_DIFFICULTY, generation_settings
from gliograde.errors import ConfigError

TINY = ("32", "32", "16")


def preset_datamodule(root: Path, cache: Path, *overrides: str):
    """The DataModule ``python train.py data.root=ROOT OVERRIDES`` builds, quiet and single-core."""
    args = [
        f"data.root={root}",
        f"data.cache_dir={cache}",
        f"paths.output_dir={cache.parent / 'run'}",
        "data.progress=false",
        "data.preprocess.workers=1",
        "data.slices.k=2",
        *overrides,
    ]
    cfg = compose_config("train", args)
    OmegaConf.resolve(cfg)
    return build(cfg.data)


def test_preset_generates_the_cohort_its_settings_describe(tmp_path: Path):
    root = tmp_path / "synthetic"
    dm = preset_datamodule(root, tmp_path / "cache", "data.synthetic.patients=6", "data.synthetic.shape=[32,32,16]")
    dm.prepare_data()
    assert generation_settings(root)["difficulty"] == DEFAULT_DIFFICULTY
    assert len(list(root.glob("*/*.nii.gz"))) == 6 * 5 and not list(root.glob("*/*.nii"))
    assert len(dm.cached.patient_ids) == 6


def test_trains_on_a_cli_cohort_with_the_printed_overrides(tmp_path: Path, capsys):
    out = tmp_path / "by hand"
    assert cli.main([str(out), "--patients", "6", "--shape", *TINY]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    command = shlex.split(printed.removeprefix("train on it: "))
    assert command[:3] == ["python", "train.py", f"data.root={out}"]
    stamp = (out / ".synthetic.json").stat().st_mtime_ns

    dm = preset_datamodule(out, tmp_path / "cache", *command[3:])
    dm.prepare_data()
    assert len(dm.cached.patient_ids) == 6
    assert (out / ".synthetic.json").stat().st_mtime_ns == stamp  # used as is, not regenerated

    with pytest.raises(ConfigError) as refused:
        preset_datamodule(out, tmp_path / "cache", *command[3:], "data.synthetic.difficulty=0.3").prepare_data()
    message = str(refused.value)
    assert "\n" not in message and str(out) in message
    assert f"to train on it add data.synthetic.difficulty={DEFAULT_DIFFICULTY!r};" in message

"""Configs are checked at composition: wrong types, out-of-range values, unknown keys and
options, and unparsable overrides are one line (exit 2) before any data work."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import pytest
from helpers.commands import run_python
from helpers.configs import compose_config
from omegaconf import DictConfig, ListConfig, OmegaConf

from gliograde.config import gpu_check
from gliograde.config.compose import CONF_DIR, check_command_line
from gliograde.data.datamodule import GliomaDataModule
from gliograde.errors import ConfigError
from gliograde.config.schema import DataSchema, validate_config, validate_data_config

GROUPS = ("data", "model", "trainer")
GROUP_OPTIONS = [
    (group, p.stem)
    for group in ("task", "data", "model", "trainer", "callbacks", "logger", "experiment", "debug", "hparams_search")
    for p in sorted((CONF_DIR / group).glob("*.yaml"))
]


def _leaves(node: DictConfig, prefix: str) -> list[str]:
    keys = []
    for key in node.keys():
        child = node[key]
        path = f"{prefix}.{key}"
        keys += _leaves(child, path) if isinstance(child, DictConfig) else [path]
    return keys


TRAIN_CFG = compose_config("train", [])
LEAVES = [key for group in GROUPS for key in _leaves(TRAIN_CFG[group], group)]


def _wrong_value(cfg: DictConfig, key: str):
    """A value of the wrong type for ``key``: text for numbers, flags and lists; a mapping for text."""
    node = OmegaConf.select(cfg, key)
    if isinstance(node, (bool, int, float, ListConfig)):
        return "abc"
    return {"wrong": 1}


def _error(cfg: DictConfig, name: str = "train") -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(cfg, name)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_leaves_cover_every_group():
    assert len(LEAVES) > 60
    assert {"data.batch_size", "data.slices.k", "model.optimizer.lr", "trainer.max_epochs"} <= set(LEAVES)


@pytest.mark.parametrize("key", LEAVES)
def test_a_wrong_type_for_any_leaf_is_one_line_naming_the_key(key):
    cfg = copy.deepcopy(TRAIN_CFG)
    value = _wrong_value(cfg, key)
    OmegaConf.update(cfg, key, value, merge=False)
    assert key in _error(cfg)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.batch_size=0", "data.batch_size=0 must be an integer >= 1"),
        ("data.slices.k=0", "data.slices.k=0"),
        ("data.slices.k=2.5", "data.slices.k=2.5 must be an integer"),
        ("data.split.train=1.5", "data.split"),
        ("data.split.train=0.9", "sum to 1"),
        ("data.split.val=-0.1", "data.split"),
        ("data.slices.strategy=best", "data.slices.strategy='best'"),
        ("data.slices.plane=oblique", "data.slices.plane='oblique'"),
        ("data.sampler=uniform", "data.sampler='uniform'"),
        ("data.on_error=ignore", "data.on_error='ignore'"),
        ("data.modalities=[flair,dwi]", "'dwi'"),
        ("data.folds=1", "data.folds=1"),
        ("data.preprocess.workers=two", "data.preprocess.workers='two'"),
        ("data.augment.prob=1.5", "data.augment.prob=1.5 must be in [0, 1]"),
        ("data.augment.gamma=[1.2,0.8]", "data.augment.gamma=[1.2, 0.8]"),
        ("data.augment.blur_sigma=[1.0,0.5]", "data.augment.blur_sigma=[1.0, 0.5] must be [low, high]"),
        ("data.synthetic.lgg_fraction=2", "data.synthetic.lgg_fraction=2"),
        ("model.optimizer.name=rmsprop", "model.optimizer.name='rmsprop' must be one of ['adamw', 'adam',"),
        ("model.scheduler.name=step", "model.scheduler.name='step'"),
        ("model.backbone=resnet999", "model.backbone='resnet999'"),
        ("model.loss.label_smoothing=1.5", "model.loss.label_smoothing=1.5"),
        ("trainer.precision=17", "trainer.precision=17"),
        ("trainer.accelerator=abacus", "trainer.accelerator='abacus'"),
        ("trainer.strategy=dp2", "trainer.strategy='dp2'"),
        ("monitor_mode=up", "monitor_mode='up' must be one of ['min', 'max']"),
        ("+data.nonexistent=1", "data.nonexistent=1: unknown key"),
        ("+data.slices.depth=3", "data.slices.depth=3: unknown key"),
        ("+model.optimizer.betas2=1", "model.optimizer.betas2=1: unknown key"),
        ("+trainer.gpu=1", "trainer.gpu=1: unknown key"),
        ("+verbose=true", "verbose=True: unknown key; the top level takes"),
    ],
)
def test_out_of_range_unknown_values_and_keys(override, expected):
    assert expected in _error(compose_config("train", [override]))


def test_evaluate_options_are_checked():
    half = compose_config("evaluate", ["run_dir=R", "threshold=half"])
    assert "threshold='half'" in _error(half, "evaluate")
    assert "threshold=1.0" in _error(compose_config("evaluate", ["run_dir=R", "threshold=1.0"]), "evaluate")
    assert "split='holdout'" in _error(compose_config("evaluate", ["run_dir=R", "split=holdout"]), "evaluate")
    assert "run_dir is not set" in _error(compose_config("evaluate", []), "evaluate")
    wrong_batch = compose_config("evaluate", ["run_dir=R", "data.batch_size=abc"])
    assert "data.batch_size='abc'" in _error(wrong_batch, "evaluate")
    for threshold in ("youden", "0.3"):
        validate_config(compose_config("evaluate", ["run_dir=R", f"threshold={threshold}"]), "evaluate")


def test_a_merged_data_node_is_checked_by_validate_data_config(tmp_path):
    node = compose_config("train", [f"data.root={tmp_path}"]).data
    validate_data_config(node)
    merged = OmegaConf.merge(node, OmegaConf.from_dotlist(["slices.k=2.5"]))
    with pytest.raises(ConfigError, match=r"data\.slices\.k=2\.5"):
        validate_data_config(merged)


def test_the_data_schema_is_the_datamodules_arguments_and_the_presets_keys():
    fields = set(DataSchema.__dataclass_fields__)
    arguments = set(inspect.signature(GliomaDataModule.__init__).parameters) - {"self"}
    assert fields == arguments | {"_target_"}
    assert fields == set(compose_config("train", ["data=brats2020"]).data.keys())


@pytest.fixture
def gpu_machine(monkeypatch):
    """The command-line check as on a machine with GPUs (it refuses GPU options on one without)."""
    monkeypatch.setattr(gpu_check, "no_gpu_here", lambda root=None: False)


@pytest.mark.parametrize("group, option", GROUP_OPTIONS)
def test_every_group_option_composes_and_validates(group, option, tmp_path, gpu_machine):
    overrides = [f"{group}={option}"]
    if group == "data" and option != "synthetic":
        overrides.append(f"data.root={tmp_path}")
    if (group, option) == ("model", "unet"):
        overrides.append("task=segment")  # the segmenter trains only as task=segment
    multirun = ["-m"] if group == "hparams_search" else []
    check_command_line("train", [*multirun, *overrides])


@pytest.mark.parametrize(
    "name, argv",
    [
        ("train", ["hydra.run.dir=/tmp/x", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"]),
        ("train", ["-m", "model=resnet18,resnet34", "data.batch_size=16,32", "seed=1"]),
        ("train", ["-m", "data.folds=5", "data.fold=0,1,2,3,4"]),
        ("train", ["-m", "data.modalities=[flair,t1ce,t1,t2],[flair]", "trainer=ddp", "trainer.devices=4"]),
        ("train", ["--cfg", "job", "experiment=strong", "data=brats2020", "data.root=/data/brats2020"]),
        ("train", ["trainer.gpus=1", "ckpt_path=RUN/checkpoints/last.ckpt", 'data.root="/tmp/Résumé"']),
        ("train", ["--help"]),
        ("train", ["-m", "task=segment", "model.optimizer.lr=0.001,0.003", "trainer.max_epochs=3"]),
        ("evaluate", ["run_dir=R", "threshold=youden", "data.root=OTHER", "split=all"]),
        ("prepare", ["data=brats2021", "data.root=/tmp/cohort"]),
    ],
)
def test_documented_command_lines_pass(name, argv, gpu_machine):
    check_command_line(name, argv)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["data.nonexistent=1"], "data.nonexistent=1: unknown key; data has _target_, augment,"),
        (["model=resnet999"], "model=resnet999: no such model config; choose one of convnext_tiny,"),
        (["task=foo"], "task=foo: no such task config; choose one of classify, segment"),
        (["data.root=/tmp/Résumé"], "quote the value for Hydra, e.g. 'data.root=\"/tmp/Résumé\"'"),
        (["model=resnet18,resnet34"], "--multirun"),
        (["-m", "model=resnet18,resnet999"], "model=resnet999: no such model config"),
        (["-m", "data.batch_size=16,0"], "data.batch_size=0 must be an integer >= 1"),
    ],
)
def test_hydra_errors_become_one_line(argv, expected):
    with pytest.raises(ConfigError) as caught:
        check_command_line("train", argv)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, overrides",
    [
        ("train.py", ["data.batch_size=abc"]),
        ("train.py", ["data.slices.k=2.5"]),
        ("train.py", ["data.nonexistent=1"]),
        ("train.py", ["model=resnet999"]),
        ("train.py", ["data.root={tmp}/Résumé"]),
        ("evaluate.py", ["run_dir={tmp}/run", "threshold=half"]),
        ("-m gliograde.prepare", ["data.split.train=abc"]),
    ],
)
def test_user_mistakes_exit_2_with_one_line_before_any_work(script, overrides, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    args = [
        f"data.root={work}/cohort",
        f"data.cache_dir={work}/cache",
        f"hydra.run.dir={work}/run",
        *(o.format(tmp=work) for o in overrides),
    ]
    result = run_python(*script.split(), *args, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stdout + result.stderr
    assert list(work.iterdir()) == []  # no cohort, cache or run directory

"""What a run records for TensorBoard's HPARAMS tab (and MLflow, CSV): the factors a sweep or an
ablation varies, no placeholder values, final metrics in HPARAMS and not as charts of their own;
and the training curves get a point every epoch whatever the number of batches."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from helpers.configs import compose_config
from helpers.tensorboard import tensorboard
from omegaconf import OmegaConf

from gliograde.config.compose import CONF_DIR
from gliograde.training.run_record import FACTORS, FINAL_RUN, record_run, run_hparams
from gliograde.training.fit import log_interval

# What a person sweeps: every factor the ablation varies, and the others a sweep commonly varies.
FACTOR_VALUES = {
    "data.crop.mode": ("none", "tumor"),
    "data.crop.size": (64, 96),
    "data.context": (0, 1),
    "data.sampler": ("random", "weighted"),
    "data.modalities": ("[flair,t1ce,t1,t2]", "[flair,t1ce]"),
    "data.slices.plane": ("axial", "coronal"),
    "model": ("resnet18", "resnet34"),
    "model.optimizer.lr": (0.001, 0.003),
    "seed": (0, 1),
    "task": ("classify", "segment"),
}


def _hparams(*overrides: str) -> dict:
    cfg = compose_config("train", ["paths.output_dir=/tmp/run", *overrides])
    OmegaConf.resolve(cfg)
    return run_hparams(cfg, list(overrides))


def _swept_keys(path: Path) -> set[str]:
    return set(OmegaConf.load(path).hydra.sweeper.params)


@pytest.mark.parametrize("key", sorted(FACTOR_VALUES))
def test_hparams_tell_apart_runs_that_differ_in_any_swept_factor(key):
    base = ["data.crop.mode=tumor"] if key == "data.crop.size" else []
    first, second = (_hparams(*base, f"{key}={value}") for value in FACTOR_VALUES[key])
    assert first != second, key
    assert None not in first.values() and None not in second.values()


def test_every_key_the_ablation_and_the_optuna_search_sweep_is_a_named_factor():
    swept = _swept_keys(CONF_DIR / "experiment" / "ablation.yaml")
    swept |= _swept_keys(CONF_DIR / "hparams_search" / "optuna.yaml")
    assert swept == {
        "seed",
        "data.modalities",
        "data.context",
        "data.crop.mode",
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "data.batch_size",
    }
    assert swept <= set(FACTORS.values())
    arm = _hparams(
        "experiment=ablation", "data.crop.mode=tumor", "data.context=1", "data.modalities=[flair,t1ce]"
    )
    assert {k: arm[k] for k in ("crop", "crop_size", "context", "modalities", "sampler", "slices_k")} == {
        "crop": "tumor",
        "crop_size": 128,
        "context": 1,
        "modalities": "flair,t1ce",
        "sampler": "weighted",
        "slices_k": 6,
    }
    assert arm["experiment"] == "ablation"  # a group chosen on the command line, by its name


def test_no_placeholder_values_for_what_does_not_apply():
    plain = _hparams()
    assert "fold" not in plain and "folds" not in plain  # no fold = -1 for runs without folds
    assert "crop_size" not in plain  # the whole slice: no crop size
    assert plain["task"] == "classify" and plain["model"] == "resnet18" and plain["plane"] == "axial"
    assert _hparams("data.slices.strategy=brain").get("slices_k") is None
    folds = _hparams("data.folds=5", "data.fold=2")
    assert folds["folds"] == 5 and folds["fold"] == 2
    assert _hparams("task=segment")["model"] == "unet"
    other = _hparams("data.augment.enabled=true", "trainer.gradient_clip_val=1.0", "data.progress=false")
    assert other["augment"] is True and other["trainer.gradient_clip_val"] == 1.0
    assert "data.progress" not in other  # how it runs, not what it trains


@pytest.mark.parametrize(
    "steps, asked, interval",
    [
        (7, None, 1),
        (7, 10, 7),
        (7, 50, 7),
        (3, 2, 2),
        (250, None, 10),
        (250, 100, 100),
        (40, 0, 0),
        (0, None, 1),
    ],
)
def test_every_epoch_gets_a_point_of_loss_and_learning_rate(steps, asked, interval):
    assert log_interval(steps, asked) == interval
    if interval:
        assert interval <= max(steps, 1)  # Lightning warns when an epoch is shorter than the interval


def _fake_run(folder: Path) -> dict[str, float]:
    """A TensorBoard folder as a 3-epoch run leaves it (4 steps an epoch), then its record."""
    from pytorch_lightning.loggers import TensorBoardLogger

    logger = TensorBoardLogger(save_dir=str(folder), name="", version="", default_hp_metric=False)
    for step in range(12):
        logger.log_metrics({"train/loss_step": 1 / (step + 1), "lr-AdamW": 0.001}, step=step)
    for epoch, step in enumerate((3, 7, 11)):
        logger.log_metrics({"val/patient_auroc": (0.6, 0.9, 0.7)[epoch], "val/loss": 0.5}, step=step)
    logger.log_metrics({"test/patient_auroc": 0.8}, step=12)  # as Lightning's test logs it
    metrics = {
        "val/patient_auroc": 0.9,
        "val/loss": 0.5,
        "val/patient_auroc_best": 0.9,
        "test/patient_auroc": 0.8,
        "train/loss": 0.3,
    }
    trainer = types.SimpleNamespace(loggers=[logger], global_step=12)
    params = {"crop": "tumor", "context": 1, "lr": 0.001, "augment": False}
    record_run(trainer, params, metrics, best_step=7, name="runs/A")
    return metrics


@pytest.mark.slow  # starts the tensorboard server
def test_tensorboard_serves_final_metrics_in_hparams_and_no_chart_of_their_own(tmp_path):
    _fake_run(tmp_path / "tensorboard")
    with tensorboard(tmp_path) as served:
        tags = served.scalar_tags()
        experiment = served.experiment()
        (group,) = served.session_groups()
        final_points = {
            tag: served.points(f"tensorboard/{FINAL_RUN}", tag) for tag in tags[f"tensorboard/{FINAL_RUN}"]
        }
        curve = served.points("tensorboard", "val/patient_auroc")
    assert not any(tag.startswith("final/") for run in tags.values() for tag in run)
    # the best checkpoint's validation sits on its epoch of each curve; the test at the end
    assert final_points == {
        "val/patient_auroc": [(7, pytest.approx(0.9))],
        "val/loss": [(7, 0.5)],
        "test/patient_auroc": [(12, pytest.approx(0.8))],
    }
    assert (7, pytest.approx(0.9)) in curve and len(curve) == 3  # the curve keeps its points
    assert set(tags[f"tensorboard/{FINAL_RUN}"]) <= set(tags["tensorboard"])  # no new chart
    assert [h["name"] for h in experiment["hparamInfos"]] == ["augment", "context", "crop", "lr"]
    shown = {m["name"]["tag"]: m["displayName"] for m in experiment["metricInfos"]}
    assert shown == {
        "val/loss": "val/loss (best checkpoint)",
        "val/patient_auroc": "val/patient_auroc (best checkpoint)",
        "test/patient_auroc": "test/patient_auroc",
    }
    assert group["name"] == "runs/A" and group["hparams"] == {
        "crop": "tumor",
        "context": 1.0,
        "lr": 0.001,
        "augment": False,
    }
    values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    assert values == {
        "val/loss": 0.5,
        "val/patient_auroc": pytest.approx(0.9),
        "test/patient_auroc": pytest.approx(0.8),
    }

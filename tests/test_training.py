"""Training through Hydra: configs compose, fast_dev_run, a real short run, sweeps, GPU flag,
resume. Uses one small synthetic cohort and one cache for the whole module."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import pytest
import torch
from helpers.commands import run_python
from helpers.configs import compose_config
from helpers.tensorboard import tensorboard
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gliograde.config.compose import CONF_DIR, build
from gliograde.data.datamodule import GliomaDataModule
from gliograde.data.synthetic.generator import generate_cohort
from gliograde.config.gpu_check import no_gpu_here
from gliograde.training.fit import NoGPUError, format_results, log_interval, trainer_options

GROUP_OPTIONS = {
    group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    for group in ("task", "data", "model", "trainer", "callbacks", "logger", "experiment", "debug", "hparams_search")
}


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Iterator[Path]:
    """40 patients (half LGG) of 48x48x24: big enough to learn from, quick to train on."""
    root = tmp_path_factory.mktemp("train") / "cohort"
    generate_cohort(root, patients=40, seed=11, shape=(48, 48, 24), lgg_fraction=0.5)
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Iterator[Path]:
    cache = tmp_path_factory.mktemp("train_cache")
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


def _data_args(root: Path, cache: Path) -> list[str]:
    return [
        "data=brats2020",
        f"data.root={root}",
        f"data.cache_dir={cache}",
        "data.slices.k=6",
        "data.batch_size=16",
        "data.progress=false",
        "data.split.train=0.5",
        "data.split.val=0.2",
        "data.split.test=0.3",
        "callbacks.progress_bar.refresh_rate=0",
    ]


def _train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_python("train.py", *args, timeout=timeout)


@pytest.mark.parametrize("group, option", [(g, o) for g, options in GROUP_OPTIONS.items() for o in options])
def test_every_config_composes_and_instantiates(group, option, tmp_path):
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}"]
    if group != "data":
        overrides.append("data=synthetic")
    if group == "data" and option != "synthetic":
        overrides.append(f"data.root={tmp_path}")
    if (group, option) in (("logger", "mlflow"), ("logger", "many")):
        overrides.append(f"logger.mlflow.store={tmp_path / 'mlflow'}")  # not the checkout's logs/
    if (group, option) == ("trainer", "ddp") and not torch.cuda.is_available():
        overrides.append("trainer.accelerator=cpu")  # refused on a machine without GPUs otherwise
    if (group, option) == ("model", "unet"):
        overrides.append("task=segment")  # the segmenter trains only as task=segment
    cfg = compose_config("train", overrides)
    OmegaConf.resolve(cfg)
    datamodule = build(cfg.data)
    assert isinstance(datamodule, GliomaDataModule)
    classes = {} if cfg.task == "segment" else {"num_classes": 2}
    model = build(cfg.model, in_channels=datamodule.num_channels, **classes)
    assert isinstance(model, pl.LightningModule)
    for node in (cfg.get("callbacks") or {}).values():
        if node is not None:
            assert isinstance(instantiate(node), pl.Callback)
    for node in (cfg.get("logger") or {}).values():
        assert isinstance(build(node), pl.loggers.Logger)
    options = trainer_options(cfg.trainer) if cfg.trainer.accelerator != "gpu" else None
    if options is not None:
        pl.Trainer(**options, logger=False, enable_checkpointing=False)


def test_optuna_sweeper_config_composes(tmp_path):
    cfg = compose_config("train", ["hparams_search=optuna"], hydra_node=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert set(cfg.hydra.sweeper.params) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "data.batch_size",
    }


def test_gpus_maps_to_accelerator_and_devices(monkeypatch):
    cfg = compose_config("train", ["trainer.gpus=2", "paths.output_dir=/tmp"]).trainer
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    options = trainer_options(cfg)
    assert options["accelerator"] == "gpu" and options["devices"] == 2 and "gpus" not in options
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(NoGPUError, match="no GPU is available.*trainer=cpu"):
        trainer_options(cfg)
    cuda = compose_config("train", ["trainer.accelerator=cuda", "paths.output_dir=/tmp"]).trainer
    with pytest.raises(NoGPUError, match=r"^trainer.accelerator=cuda, but no GPU is available \(torch"):
        trainer_options(cuda)


def test_ddp_without_a_gpu_needs_an_explicit_cpu_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cfg = compose_config("train", ["trainer=ddp", "trainer.devices=4", "paths.output_dir=/tmp"]).trainer
    with pytest.raises(NoGPUError, match="trainer.devices=4 asks for GPUs.*trainer.accelerator=cpu"):
        trainer_options(cfg)
    cfg = compose_config(
        "train", ["trainer=ddp", "trainer.devices=4", "trainer.accelerator=cpu", "paths.output_dir=/tmp"]
    )
    options = trainer_options(cfg.trainer)
    assert (options["accelerator"], options["devices"], options["strategy"]) == ("cpu", 4, "ddp")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cfg = compose_config("train", ["trainer=ddp", "paths.output_dir=/tmp"])
    assert trainer_options(cfg.trainer)["strategy"] == "ddp"


@pytest.mark.slow
def test_ddp_on_a_cpu_machine_exits_before_any_data_work(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    # refused by the command-line check where no GPU is in sight, by the trainer's otherwise
    why = "no GPU device or driver on this machine" if no_gpu_here() else "torch.cuda.is_available() is False"
    cache = tmp_path / "cache"
    result = _train(
        "trainer=ddp",
        "trainer.devices=4",
        f"data.root={tmp_path / 'synthetic'}",
        f"data.cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: trainer.strategy=ddp with trainer.devices=4 asks for GPUs, but no GPU is available "
        f"({why}). Add trainer.accelerator=cpu for CPU processes, or run on the CPU with trainer=cpu."
    ]
    assert not (tmp_path / "synthetic").exists() and not cache.exists()
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow
def test_gpus_on_a_cpu_machine_exits_before_any_data_work(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = _train(
        "trainer.gpus=1",
        "data=brats2020",
        f"data.root={tmp_path / 'absent'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=120,
    )
    assert result.returncode == 2
    assert "no GPU is available" in result.stderr and "trainer=cpu" in result.stderr
    assert "absent" not in result.stderr  # refused before the (bad) data root was looked at


@pytest.mark.slow
def test_fast_dev_run_through_hydra(small_cohort, cache_dir, tmp_path):
    run = tmp_path / "run"
    result = _train(*_data_args(small_cohort, cache_dir), "debug=fast", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test/patient_auroc" in metrics and "val/patient_auroc" in metrics
    assert (run / "splits.csv").exists() and (run / "config.yaml").exists()
    assert not (run / "checkpoints").exists() and not (run / "tensorboard").exists()
    *_, what, where = result.stdout.strip().splitlines()
    assert what.startswith("fast_dev_run ran one batch of each stage and wrote no checkpoint")
    assert where.startswith(f"Run directory: {run} (holds config.yaml, metrics.json, predictions_test.csv")


def _events(run: Path) -> dict[str, set[str]]:
    """Tags in the run's TensorBoard event files, by kind (scalars, images, hparams)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags: dict[str, set[str]] = {}
    for path in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                kind = "scalars" if value.HasField("simple_value") else value.metadata.plugin_data.plugin_name
                tags.setdefault(kind, set()).add(value.tag)
    return tags


@pytest.mark.slow
def test_short_run_learns_grade_and_writes_a_self_describing_run(small_cohort, cache_dir, tmp_path):
    run = tmp_path / "run"
    result = _train(
        *_data_args(small_cohort, cache_dir), "trainer=cpu", "trainer.max_epochs=6", f"hydra.run.dir={run}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/patient_count"] == 12
    assert metrics["test/patient_auroc"] >= 0.8, metrics  # chance is 0.5
    assert "val/patient_auroc_best" in metrics
    assert "Patient-level test metrics:" in result.stdout
    for noise in ("Tip: For seamless", "already configured with model summary", "LeafSpec"):
        assert noise not in result.stdout + result.stderr  # handled, so not shown
    # the project's summary alone: no table of Lightning's, no warning about the logging interval
    assert "DataLoader 0" not in result.stdout and "Test metric" not in result.stdout
    assert "smaller than the logging interval" not in result.stderr
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert len(list((run / "checkpoints").glob("epoch_*.ckpt"))) == 1  # the best, by val/patient_auroc
    assert all(isinstance(v, float) for v in metrics.values())  # a flat mapping of numbers
    splits = (run / "splits.csv").read_text().splitlines()
    modalities = ("flair", "t1", "t1ce", "t2")
    kinds = ("fingerprint", "order_fingerprint")
    fingerprints = ",".join(f"{kind}_{m}" for kind in kinds for m in modalities)
    assert splits[0] == f"patient_id,label,split,{fingerprints}" and len(splits) == 41
    tags = _events(run)
    assert {"val/patient_auroc", "test/patient_auroc", "train/loss_step"} <= tags["scalars"]
    assert {"train/sample_slices", "test/patient_confusion_matrix"} <= tags["images"]
    # Through TensorBoard's own server, as its page shows them: curves with a point per
    # validation epoch, a point per step of the loss and the learning rate (7 batches an epoch),
    # and the final metrics in HPARAMS, beside every factor of the run and no placeholder.
    with tensorboard(run) as served:
        tags = served.scalar_tags()
        curve = served.points("tensorboard", "val/patient_auroc")
        test_points = served.points("tensorboard", "test/patient_auroc")
        (lr_tag,) = [tag for tag in tags["tensorboard"] if tag.startswith("lr-")]
        lr_points = served.points("tensorboard", lr_tag)
        loss_points = served.points("tensorboard", "train/loss_step")
        best_points = served.points("tensorboard/final", "val/patient_auroc")
        experiment = served.experiment()
        (group,) = served.session_groups()
    assert set(tags) == {"tensorboard", "tensorboard/final"}
    assert not [tag for tag in tags["tensorboard"] + tags["tensorboard/final"] if tag.startswith("final/")]
    assert set(tags["tensorboard/final"]) <= set(tags["tensorboard"])  # no chart of their own
    steps = [step for step, _ in curve]
    assert len(steps) == 6 and steps == sorted(set(steps)) and steps[0] > 0
    assert len(test_points) == 1 and test_points[0][0] > 0
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] == 6 * 7
    assert len(loss_points) == len(lr_points) == 6 * 7
    # the best checkpoint's validation is a point of its own epoch on the curve
    ((best_step, best_value),) = best_points
    assert (best_step, pytest.approx(best_value)) in curve
    assert best_value == pytest.approx(metrics["val/patient_auroc"])
    names = {info["name"] for info in experiment["hparamInfos"]}
    factors = {"task", "model", "modalities", "plane", "slices", "crop", "context", "sampler", "lr", "seed"}
    assert factors <= names
    assert not names & {"fold", "folds", "crop_size"}  # nothing that does not apply to this run
    assert group["name"] == str(run)
    assert group["hparams"]["crop"] == "none" and group["hparams"]["sampler"] == "random"
    values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    for name in ("val/patient_auroc", "test/patient_auroc", "test/patient_balanced_accuracy"):
        assert values[name] == pytest.approx(metrics[name]), name
    # a checkpoint alone rebuilds the model
    from gliograde.models.module import GradeClassifier

    model = GradeClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert model.hparams.in_channels == 4 and model(torch.zeros(1, 4, 48, 48)).shape == (1, 2)


@pytest.mark.slow
def test_two_job_sweep_runs_each_job_in_its_own_directory(small_cohort, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    result = _train(
        "-m",
        *_data_args(small_cohort, cache_dir),
        "debug=fast",
        "model=resnet18,resnet34",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]
    backbones = [OmegaConf.load(job / "config.yaml").model.backbone for job in jobs]
    assert backbones == ["resnet18", "resnet34"]
    assert all((job / "metrics.json").exists() for job in jobs)
    assert len([p for p in cache_dir.iterdir() if p.is_dir()]) == 1  # both jobs used one cache


@pytest.mark.slow
def test_resume_from_last_checkpoint(small_cohort, cache_dir, tmp_path):
    run = tmp_path / "run"
    # debug=limit's batches, with last.ckpt (debug=limit keeps only the best checkpoint)
    limits = ["trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
    common = [*_data_args(small_cohort, cache_dir), "trainer=cpu", *limits, f"hydra.run.dir={run}"]
    first = _train(*common, "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    assert (
        torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 4
    )  # one epoch of 4 batches
    second = _train(*common, "trainer.max_epochs=2", f"ckpt_path={last}")
    assert second.returncode == 0, second.stderr[-3000:]
    state = torch.load(last, weights_only=False, map_location="cpu")
    assert state["global_step"] == 8 and state["epoch"] == 1
    assert "Restoring states from the checkpoint" in second.stdout + second.stderr


def test_slurm_launcher_config_composes():
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    cfg = compose_config("train", overrides, hydra_node=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)


@pytest.mark.slow
def test_optuna_study_runs_trials_on_the_optimized_metric(small_cohort, cache_dir, tmp_path):
    sweep = tmp_path / "optuna"
    result = _train(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        *_data_args(small_cohort, cache_dir),
        "callbacks.last_checkpoint=null",  # never resumed: the best checkpoint is enough
        "trainer=cpu",
        "debug=limit",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    # data.batch_size is fixed by the command line here, so only the optimiser is searched
    assert set(results.best_params) == {"model.optimizer.lr", "model.optimizer.weight_decay"}
    best = max(
        json.loads((sweep / j / "metrics.json").read_text())["val/patient_auroc_best"] for j in ("0", "1")
    )
    assert results.best_value == pytest.approx(best)


@pytest.mark.slow
def test_a_missing_checkpoint_to_resume_is_one_line_before_any_data_work(tmp_path):
    result = _train(
        "trainer=cpu",
        "data=brats2020",
        f"data.root={tmp_path / 'absent'}",
        f"ckpt_path={tmp_path / 'nope.ckpt'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: ckpt_path={tmp_path / 'nope.ckpt'}: no such checkpoint file (resume from RUN/checkpoints/last.ckpt)"
    ]


@pytest.mark.parametrize(
    "batches, interval", [(1, 1), (7, 1), (19, 1), (20, 2), (55, 5), (99, 9), (100, 10), (5000, 10)]
)
def test_training_curves_get_a_point_every_step_in_short_epochs(batches, interval):
    assert log_interval(batches) == interval
    assert batches // log_interval(batches) >= min(batches, 10)  # never fewer than 10 points an epoch


def test_the_default_trainer_leaves_the_logging_interval_to_the_run():
    assert compose_config("train", ["paths.output_dir=/tmp"]).trainer.log_every_n_steps is None


def test_a_fast_dev_run_says_what_it_wrote_and_where(tmp_path):
    for name in ("config.yaml", "splits.csv", "metrics.json"):
        (tmp_path / name).write_text("")
    (tmp_path / ".hydra").mkdir()
    metrics = {"test/patient_auroc": 0.75, "val/patient_auroc": 0.5}
    lines = format_results(metrics, tmp_path, fast_dev_run=True).splitlines()
    assert lines[1] == "Patient-level test metrics of one batch (a check of the setup, not a result):"
    assert lines[2].split() == ["test/patient_auroc", "0.7500"]
    assert lines[-2].startswith("fast_dev_run ran one batch of each stage and wrote no checkpoint")
    assert lines[-1] == f"Run directory: {tmp_path} (holds config.yaml, metrics.json, splits.csv)"
    assert "3 batches of each stage" in format_results(metrics, tmp_path, fast_dev_run=3)
    plain = format_results(metrics, tmp_path).splitlines()
    assert plain[1] == "Patient-level test metrics:" and plain[-1] == f"Run directory: {tmp_path}"


def test_the_article_shortened_for_a_cpu_keeps_its_setup():
    cfg = compose_config("train", ["experiment=article", "debug=limit", "paths.output_dir=/tmp"])
    assert cfg.model.stem_stride == 1 and cfg.data.slices.strategy == "tumor_all" and cfg.data.batch_size == 32
    limits = ("max_epochs", "limit_train_batches", "limit_val_batches", "limit_test_batches")
    assert [cfg.trainer[key] for key in limits] == [2, 4, 2, 2]


@pytest.mark.slow
def test_the_article_shortened_for_a_cpu_runs(small_cohort, cache_dir, tmp_path):
    run = tmp_path / "run"
    data = [a for a in _data_args(small_cohort, cache_dir) if not a.startswith(("data.slices", "data.batch"))]
    result = _train(*data, "experiment=article", "debug=limit", "trainer=cpu", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert OmegaConf.load(run / "config.yaml").model.stem_stride == 1
    (kept,) = (run / "checkpoints").glob("*.ckpt")  # never resumed: the best checkpoint alone
    best = torch.load(kept, weights_only=False, map_location="cpu")
    assert kept.name.startswith("epoch_") and best["global_step"] == 4 * (best["epoch"] + 1)  # four batches an epoch
    assert "test/patient_auroc" in json.loads((run / "metrics.json").read_text())

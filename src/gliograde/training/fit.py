"""Training from a composed config: data, model, callbacks, loggers, trainer; fit, then test
the best checkpoint; every run directory ends self-describing."""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from gliograde.files.atomic import check_writable_dir, write_frame, write_text
from gliograde.training.checkpoint_io import AtomicCheckpointIO, share_if_same
from gliograde.training.run_lock import training_lock
from gliograde.config.compose import build
from gliograde.contract.input_contract import from_datamodule
from gliograde.contract.recorder import config_with_contract
from gliograde.data.discovery.identity import training_records
from gliograde.training.distributed import launch_ranks_as_this_job
from gliograde.errors import GliogradeError
from gliograde.config.gpu_check import NoGPUError, gpu_refusal
from gliograde.training.resume import nothing_left, refuse_existing_run, resumed_config
from gliograde.training.run_record import best_step, command_line_overrides, record_run, run_hparams

log = logging.getLogger(__name__)


# Set by Lightning's DDP launcher in the launching process.
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


class RunDirectoryError(GliogradeError):
    """The run directory cannot be written."""


def trainer_options(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.trainer`` as Trainer keyword arguments, with the ``gpus`` shortcut mapped.

    Lightning 2 removed ``Trainer(gpus=N)``; ``trainer.gpus=N`` still means
    ``accelerator=gpu, devices=N`` here, and fails at once without a GPU.
    """
    options = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(options, dict)
    options.pop("_target_", None)
    gpus = options.pop("gpus", None)
    why = "torch.cuda.is_available() is False"
    refusal = gpu_refusal({**options, "gpus": gpus}, torch.cuda.device_count(), why)
    if refusal:
        raise NoGPUError(refusal)
    if gpus not in (None, 0, "0"):
        options["accelerator"] = "gpu"
        options["devices"] = gpus
    on_cpu = options.get("accelerator") == "cpu" or (
        options.get("accelerator") in (None, "auto") and torch.cuda.device_count() == 0
    )
    if options.get("sync_batchnorm") and on_cpu:
        if rank_zero_only.rank == 0:
            log.info("trainer.sync_batchnorm needs GPUs; batch norm stays per process on the CPU")
        options["sync_batchnorm"] = False
    return options


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as ``cfg`` says; return the run's final metrics (also in metrics.json)."""
    launcher_env = {key: os.environ.get(key) for key in _LAUNCHER_ENV}
    try:
        with ExitStack() as hold:
            return _train(cfg, hold)
    finally:
        # The next job of a sweep runs in this process: it must start its own process group
        # and launch its own ranks, which Lightning skips while LOCAL_RANK is set.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in launcher_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _train(cfg: DictConfig, hold: ExitStack) -> dict[str, float]:
    out = Path(cfg.paths.output_dir)  # Hydra's run directory
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise RunDirectoryError(
            f"ckpt_path={ckpt_path}: no such checkpoint file (resume from RUN/checkpoints/last.ckpt)"
        )
    lead = rank_zero_only.rank == 0  # DDP ranks started by Lightning carry their rank in the environment
    if ckpt_path:
        cfg = resumed_config(cfg, out, ckpt_path)
    elif lead:  # other ranks start after the lead has written the run's config
        refuse_existing_run(out)
    trainer_kwargs = trainer_options(cfg.trainer)  # before any data work: fail fast
    # A run killed after fitting but before its test has no metrics.json: it resumes to test.
    finished = ckpt_path and (out / "metrics.json").is_file()
    done = nothing_left(ckpt_path, cfg.trainer) if finished else None
    if done:
        if lead:
            print(
                f"Nothing left to train: {ckpt_path} has finished its run ({done}); the outputs in {out} "
                "stay as they are. Raise trainer.max_epochs to train it further."
            )
        return _saved_metrics(out)
    try:
        check_writable_dir(out)
    except OSError as exc:
        raise RunDirectoryError(f"{out}: run directory is not writable ({exc.strerror or exc})") from None
    pl.seed_everything(cfg.seed, workers=True, verbose=lead)

    segment = cfg.get("task", "classify") == "segment"
    if segment:  # the same data config, served with each slice's tumour mask
        from gliograde.segmentation.datamodule import SegmentationDataModule

        data = OmegaConf.to_container(cfg.data, resolve=True)
        data.pop("_target_", None)
        datamodule = SegmentationDataModule(**data)
    else:
        datamodule = build(cfg.data)
    if ckpt_path:  # the run's own patients and split, or a refusal if the cohort changed
        if not (out / "splits.csv").is_file():
            raise RunDirectoryError(
                f"{out / 'splits.csv'}: missing, so the split {ckpt_path} was trained on is unknown; "
                "restore it, or start a new run instead of resuming"
            )
        datamodule.keep_split(out / "splits.csv")
    datamodule.prepare_data()
    datamodule.setup("fit")

    if segment:
        model = build(cfg.model, in_channels=datamodule.num_channels, monitor=cfg.monitor)
    else:
        class_weights = None
        if cfg.model.get("loss", {}).get("class_weighted"):
            class_weights = datamodule.class_weights.tolist()
        model = build(
            cfg.model,
            in_channels=datamodule.num_channels,
            num_classes=len(datamodule.classes),
            class_names=list(datamodule.classes),
            class_weights=class_weights,
            monitor=cfg.monitor,
        )
    model.input_contract = from_datamodule(datamodule, "segmenter" if segment else "classifier")
    model.training_patients = training_records(datamodule.splits_table())

    nodes = dict(cfg.get("callbacks") or {})
    if _sweep_job() and nodes.get("last_checkpoint") is not None:
        # A sweep job is never resumed: its best checkpoint is all it keeps (one file, not two).
        nodes["last_checkpoint"] = None
    callbacks = [instantiate(node) for node in nodes.values() if node is not None]
    loggers = [build(node) for node in (cfg.get("logger") or {}).values() if node is not None]
    launch_ranks_as_this_job()
    trainer = pl.Trainer(
        **trainer_kwargs, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    asked = trainer_kwargs.get("log_every_n_steps")
    trainer.log_every_n_steps = _logging_interval(trainer, datamodule, asked, lead)

    hold.enter_context(training_lock(out))  # until the run ends: `make clean` leaves it alone
    if lead:
        write_text(out / "config.yaml", config_with_contract(cfg, datamodule))
        if not ckpt_path:
            datamodule.write_splits(out / "splits.csv")

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = _numbers(trainer.callback_metrics)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    lasts = _latest_checkpoints(trainer)  # before validate and test restore the callbacks' states
    if best and lead:
        log.info("Validating and testing the best checkpoint: %s", best)
    # The best model's validation predictions: the out-of-fold predictions of cross-validation.
    # Not logged: its values would add a second point at the last step of every val/* curve;
    # they reach TensorBoard with the hyperparameters instead.
    loggers, trainer.loggers = trainer.loggers, []
    try:
        trainer.validate(
            model, datamodule=datamodule, ckpt_path=best or None, weights_only=False, verbose=False
        )
    finally:
        trainer.loggers = loggers
    metrics.update(_numbers(trainer.callback_metrics))
    if cfg.get("test", True):
        # verbose=False: the summary below replaces Lightning's table of every test metric
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=False, verbose=False)
        metrics.update(_numbers(trainer.callback_metrics))

    if trainer.is_global_zero:
        for stage, outputs in model.patient_outputs.items():
            if segment:
                _write_patient_dice(out / f"dice_{stage}.csv", outputs, datamodule)
            else:
                _write_patient_predictions(out / f"predictions_{stage}.csv", outputs, datamodule)
        write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        step = best_step(best, default=max(trainer.global_step - 1, 0))
        record_run(trainer, run_hparams(cfg, command_line_overrides()), metrics, step, name=str(out))
        for last in lasts:  # the best epoch was the last: one file under both names
            if best and share_if_same(best, last):
                log.info("The best epoch was the last: %s and %s are one file on disk", best, last)
        threshold = cfg.get("threshold", 0.5)
        print(format_results(metrics, out, fast_dev_run=trainer.fast_dev_run, threshold=threshold))
    return metrics


def _sweep_job() -> bool:
    """Whether this run is a job of a Hydra multirun (a sweep or a study)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _latest_checkpoints(trainer: pl.Trainer) -> list[str]:
    """The files of the checkpoint callbacks without a monitor (``last.ckpt``): the latest epoch."""
    return [
        callback.best_model_path
        for callback in trainer.checkpoint_callbacks
        if getattr(callback, "monitor", "") is None and getattr(callback, "best_model_path", "")
    ]


def _saved_metrics(out: Path) -> dict[str, float]:
    """A finished run's metrics.json (empty when it has none)."""
    try:
        return json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_patient_predictions(path: Path, outputs: dict[str, torch.Tensor], datamodule) -> None:
    """patient_id, label and class probabilities of one stage's patients, and with two classes
    their ``score``: the log-odds that ranks them, as in evaluate.py's patient_predictions.csv."""
    classes = list(datamodule.classes)
    frame = pd.DataFrame(outputs["probs"].double().numpy(), columns=[f"prob_{c}" for c in classes])
    frame.insert(0, "patient_id", [datamodule.cached.patient_ids[p] for p in outputs["patient"].tolist()])
    frame.insert(1, "label", [classes[y] if y >= 0 else "" for y in outputs["label"].tolist()])
    if "score" in outputs:
        frame["score"] = outputs["score"].double().numpy()
    write_frame(path, frame)


def _write_patient_dice(path: Path, outputs: dict[str, torch.Tensor], datamodule) -> None:
    """patient_id, 3D Dice and its voxel counts (TP, FP, FN) of one stage's patients."""
    counts = outputs["counts"].numpy()
    frame = pd.DataFrame(
        {
            "patient_id": [datamodule.cached.patient_ids[p] for p in outputs["patient"].tolist()],
            "dice": outputs["dice"].double().numpy(),
            "true_positive": counts[:, 0],
            "false_positive": counts[:, 1],
            "false_negative": counts[:, 2],
        }
    )
    write_frame(path, frame)


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """Finite scalar metrics as floats (JSON has no NaN; an undefined metric is left out)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and math.isfinite(value):
            flat[key] = float(value)
    return flat


def log_interval(train_steps: int, asked: int | None = None) -> int:
    """Steps between the points of the training curves (loss, learning rate). Null ``asked``
    (``trainer.log_every_n_steps``): every step in epochs of fewer than 20 optimizer steps, else
    at least ten points an epoch, and every 10 steps from 100 on. Any interval is at most an
    epoch's steps, so every epoch gets a point."""
    steps = max(1, train_steps)
    if asked is None:
        return max(1, min(10, steps // 10))
    return min(int(asked), steps) if asked > 0 else 0  # 0: the user turned step logging off


def _logging_interval(trainer: pl.Trainer, datamodule, asked: int | None, lead: bool) -> int:
    batches = _train_batches(trainer, datamodule)
    steps = math.ceil(batches / max(1, int(trainer.accumulate_grad_batches)))
    interval = log_interval(steps, asked)
    if asked is not None and interval != asked and lead:
        log.info(
            "trainer.log_every_n_steps=%s is more than an epoch's %d optimizer steps: logging every %d "
            "so that every epoch has a point", asked, steps, interval,
        )
    return interval


def _train_batches(trainer: pl.Trainer, datamodule) -> int:
    """Training batches per epoch on each process, as ``limit_train_batches`` cuts them."""
    rows = math.ceil(len(datamodule.datasets["train"]) / trainer.world_size)
    batches = math.ceil(rows / datamodule.batch_size)
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        return min(batches, limit)
    return int(batches * limit) if limit is not None else batches


def format_results(
    metrics: dict[str, Any], out: Path, fast_dev_run: int | bool = False, threshold: float | str = 0.5
) -> str:
    """The patient-level test metrics and where the run lives, led by the headline of
    :func:`gliograde.evaluation.summary.run_headline` (AUROC and balanced accuracy at the stated
    ``threshold``, and a warning for a classifier that does not separate the classes); after a
    ``fast_dev_run``, what it did and what the run directory holds."""
    from gliograde.evaluation.summary import run_headline

    head, at_threshold = run_headline(out, threshold)
    rows = [(k, v) for k, v in sorted(metrics.items()) if k.startswith("test/patient_")]
    # the threshold's own figures: metrics.json holds Lightning's, at 0.5
    rows = [(k, at_threshold.get(k[len("test/patient_") :], v)) for k, v in rows]
    width = max((len(k) for k, _ in rows), default=0)
    batches = "one batch" if int(fast_dev_run) == 1 else f"{int(fast_dev_run)} batches"
    title = "Patient-level test metrics:"
    if fast_dev_run:
        title = f"Patient-level test metrics of {batches} (a check of the setup, not a result):"
    lines = ["", title, *(f"  {line}" for line in head)]
    lines += [f"  {k:<{width}}  {v:.4f}" for k, v in rows] or ["  (no test metrics)"]
    if at_threshold and at_threshold["threshold"] != 0.5:
        lines.append(
            f"  (metrics.json holds these figures at threshold 0.5; the lines above use "
            f"{at_threshold['threshold']:.3f})"
        )
    if not fast_dev_run:
        lines.append(f"Run directory: {out}")
        return "\n".join(lines)
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    lines.append(
        f"fast_dev_run ran {batches} of each stage and wrote no checkpoint and no TensorBoard, CSV "
        "or MLflow logs: evaluate.py, export and resuming need a run without debug=fast."
    )
    lines.append(f"Run directory: {out} (holds {', '.join(written)})")
    return "\n".join(lines)

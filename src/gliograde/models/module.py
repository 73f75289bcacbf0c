"""The LightningModule: a backbone, cross-entropy, and slice- and patient-level metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassStatScores,
)

from gliograde.data.discovery.identity import TRAINING_PATIENTS
from gliograde.models.backbones import create_backbone
from gliograde.models.names import DEFAULT_LOSS, DEFAULT_OPTIMIZER, DEFAULT_SCHEDULER, OPTIMIZER_CLASSES
from gliograde.models.patient_metrics import PatientProbabilities, classification_metrics
from gliograde.errors import ConfigError

OPTIMIZERS = {name: getattr(torch.optim, cls) for name, cls in OPTIMIZER_CLASSES.items()}


class SliceMetrics(torch.nn.Module):
    """Slice-level accuracy, balanced accuracy, AUROC and F1 (of class 1 when binary)."""

    def __init__(self, stage: str, num_classes: int):
        super().__init__()
        self.binary = num_classes == 2
        # Updated every training step: torchmetrics' argument checks (torch.unique) wait for the
        # GPU each time. Labels were checked when the cohort was read; probabilities are softmaxes.
        unchecked = {"validate_args": False}
        self.on_probs = MetricCollection(
            {
                "accuracy": MulticlassAccuracy(num_classes, average="micro", **unchecked),
                "balanced_accuracy": MulticlassAccuracy(num_classes, average="macro", **unchecked),
            },
            prefix=f"{stage}/",
        )
        if self.binary:
            ranking = {"auroc": BinaryAUROC(**unchecked), "f1": BinaryF1Score(**unchecked)}
        else:
            ranking = {
                "auroc": MulticlassAUROC(num_classes, **unchecked),
                "f1": MulticlassF1Score(num_classes, average="macro", **unchecked),
            }
        self.on_scores = MetricCollection(ranking, prefix=f"{stage}/")
        # Slices per class: a class that never appeared leaves AUROC and balanced accuracy undefined.
        self.per_class = MulticlassStatScores(num_classes, average=None, **unchecked)
        self.stage = stage

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        self.on_probs.update(probs, labels)
        self.on_scores.update(probs[:, 1] if self.binary else probs, labels)
        self.per_class.update(probs, labels)

    def compute(self) -> dict[str, torch.Tensor]:
        values = {**self.on_probs.compute(), **self.on_scores.compute()}
        support = self.per_class.compute()[:, 4]
        if bool((support == 0).any()):
            for name in ("auroc", "balanced_accuracy"):
                values[f"{self.stage}/{name}"] = torch.tensor(float("nan"), device=support.device)
        return values

    def reset(self) -> None:
        self.on_probs.reset()
        self.on_scores.reset()
        self.per_class.reset()


class GradeClassifier(pl.LightningModule):
    """Slice classifier whose reports are patient-level (mean slice probability per patient).

    Metric names: ``{stage}/{metric}`` for slices, ``{stage}/patient_{metric}`` for patients,
    and ``val/{monitor}_best`` for the best value so far of the monitored patient metric.
    All constructor arguments are saved in checkpoints, so a checkpoint alone rebuilds it.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        in_channels: int = 4,
        num_classes: int = 2,
        class_names: Sequence[str] = ("LGG", "HGG"),
        pretrained: str | None = None,
        stem_stride: int | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        class_weights: Sequence[float] | None = None,
        monitor: str = "val/patient_auroc",
        compile: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        # logger=False: hyperparameters go to TensorBoard once, at the end, with the final metrics.
        self.save_hyperparameters(logger=False)
        self.optimizer_cfg = {**DEFAULT_OPTIMIZER, **(optimizer or {})}
        self.scheduler_cfg = {**DEFAULT_SCHEDULER, **(scheduler or {})}
        loss = {**DEFAULT_LOSS, **(loss or {})}
        self.label_smoothing = float(loss["label_smoothing"])
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weight", weights, persistent=False)
        self.net = create_backbone(backbone, in_channels, num_classes, pretrained, stem_stride)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        # Kept out of the module tree: registering the compiled wrapper would store every weight twice.
        self.__dict__["_compiled_net"] = torch.compile(self.net) if compile else None
        # ModuleDict keys may not shadow nn.Module attributes such as ``train``.
        # Slice metrics of training batches; val/test slice and patient metrics come from the
        # gathered (patient, slice) rows, where a DistributedSampler's padding counts once.
        self.train_slice_metrics = SliceMetrics("train", num_classes)
        # ModuleDict keys may not shadow nn.Module attributes such as ``train``.
        self.patient_probs = torch.nn.ModuleDict(
            {f"{s}_patients": PatientProbabilities() for s in ("val", "test")}
        )
        self.monitor = monitor
        self.best_monitored = MaxMetric()
        self.best_monitored.persistent(True)  # a resumed run continues the same best-so-far
        # Latest patient-level outputs per stage: {"patient", "probs", "label"} tensors on the CPU.
        self.patient_outputs: dict[str, dict[str, torch.Tensor]] = {}
        # What the model must be fed (see gliograde.contract.input_contract); set by training, saved in every
        # checkpoint, weights-only ones included (Lightning calls this module's hook for those too).
        self.input_contract: dict[str, Any] | None = None
        # The training split's ids, labels and image fingerprints (see gliograde.data.discovery.identity),
        # saved in every checkpoint: wherever the checkpoint goes, its leaks can be found.
        self.training_patients: list[dict[str, str]] | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        weight_dtype = next(self.net.parameters()).dtype
        if images.is_floating_point() and images.dtype != weight_dtype:
            images = images.to(weight_dtype)  # float16 batches straight from a DataLoader
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (self._compiled_net or self.net)(images)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.input_contract is not None:
            checkpoint["input_contract"] = self.input_contract
        if self.training_patients is not None:
            checkpoint[TRAINING_PATIENTS] = self.training_patients

    def stage_predictions(self, stage: str) -> dict[str, torch.Tensor] | None:
        """The latest patient-level outputs of ``stage`` (val or test): ``patient`` (cache
        positions), ``probs`` [P, K] and ``label`` tensors on the CPU; None before any."""
        return self.patient_outputs.get(stage)

    # ----------------------------------------------------------------- steps
    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        labels = batch["label"]
        loss = F.cross_entropy(logits, labels, weight=self.class_weight, label_smoothing=self.label_smoothing)
        probs = logits.detach().float().softmax(dim=1)
        if stage == "train":
            self.train_slice_metrics.update(probs, labels)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            batch_size=len(labels),
            sync_dist=stage != "train",
        )
        if f"{stage}_patients" in self.patient_probs:
            self.patient_probs[f"{stage}_patients"].update(
                logits.detach(), labels, batch["patient"], batch["slice_index"]
            )
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        probs = self(batch["image"]).float().softmax(dim=1)
        return {
            "probs": probs,
            "patient": batch["patient"],
            "slice_index": batch["slice_index"],
            "label": batch["label"],
        }

    # ------------------------------------------------------------ epoch ends
    def _log_epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        if stage == "train":
            self.log_dict(self.train_slice_metrics.compute(), sync_dist=True)
            self.train_slice_metrics.reset()
            return {}
        collected = self.patient_probs[f"{stage}_patients"]
        rows = collected.rows()
        collected.reset()
        if len(rows["patient"]) == 0:
            return {}
        values = classification_metrics(
            rows["slice_probs"], rows["slice_label"], prefix=f"{stage}/", scores=rows.get("slice_score")
        )
        values.update(
            classification_metrics(
                rows["probs"], rows["label"], prefix=f"{stage}/patient_", scores=rows.get("score")
            )
        )
        values[f"{stage}/patient_count"] = torch.tensor(float(len(rows["patient"])))
        # Every rank computed the same values from the gathered states.
        dtype = torch.float32 if self.device.type == "mps" else None  # MPS has no float64
        values = {k: v.to(self.device, dtype) for k, v in values.items()}
        self.log_dict(values, sync_dist=True)
        keep = ("patient", "probs", "label", "score")
        self.patient_outputs[stage] = {k: rows[k].cpu() for k in keep if k in rows}
        return values

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch_metrics("val")
        if self.trainer.sanity_checking or self.monitor not in values:
            return
        current = values[self.monitor]
        if not torch.isnan(current):
            self.best_monitored.update(current.to(self.device))
        if self.best_monitored.update_called:  # nothing to report while every value was undefined
            self.log(f"{self.monitor}_best", self.best_monitored.compute(), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # ------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = dict(self.optimizer_cfg)
        name = cfg.pop("name")
        if name not in OPTIMIZERS:
            raise ConfigError(f"model.optimizer.name={name!r} must be one of {list(OPTIMIZERS)}")
        optimizer = OPTIMIZERS[name](self.parameters(), **cfg)
        schedule = dict(self.scheduler_cfg)
        kind = schedule.pop("name")
        if kind in (None, "none", "constant"):
            return {"optimizer": optimizer}
        if kind != "cosine":
            raise ConfigError(f"model.scheduler.name={kind!r} must be cosine or none")
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        warmup = int(total * float(schedule["warmup_epochs"]) / epochs)
        lr_lambda = _warmup_cosine(total, warmup, float(schedule["min_lr_ratio"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _warmup_cosine(total: int, warmup: int, floor: float):
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor

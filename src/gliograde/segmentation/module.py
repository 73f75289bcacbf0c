"""The segmenter's LightningModule: a small 2D UNet, Dice + cross-entropy, patient 3D Dice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import MaxMetric

from gliograde.data.discovery.identity import TRAINING_PATIENTS
from gliograde.models.module import GradeClassifier
from gliograde.models.names import DEFAULT_OPTIMIZER, DEFAULT_SCHEDULER
from gliograde.segmentation.metrics import PatientDice, slice_counts
from gliograde.segmentation.network import DEFAULT_FEATURES, PaddedUNet

THRESHOLD = 0.5  # probability above which a pixel is tumour, in metrics and in inference


class TumourSegmenter(pl.LightningModule):
    """Whole-tumour segmentation of axial slices, reported per patient.

    Logs ``train/loss``, ``val/loss``, ``{val,test}/patient_dice`` (the mean over patients of
    each patient's 3D Dice, from the counts of all its slices), ``{val,test}/patient_dice_min``,
    ``{val,test}/patient_count`` and ``val/patient_dice_best``. Every constructor argument is
    saved in checkpoints, so a checkpoint alone rebuilds it.
    """

    def __init__(
        self,
        in_channels: int = 4,
        features: Sequence[int] = DEFAULT_FEATURES,
        dropout: float = 0.0,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        monitor: str = "val/patient_dice",
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        from monai.losses import DiceCELoss

        self.optimizer_cfg = {**DEFAULT_OPTIMIZER, **(optimizer or {})}
        self.scheduler_cfg = {**DEFAULT_SCHEDULER, **(scheduler or {})}
        weights = {"lambda_dice": 1.0, "lambda_ce": 1.0, **(loss or {})}
        self.loss_fn = DiceCELoss(
            sigmoid=True, lambda_dice=float(weights["lambda_dice"]), lambda_ce=float(weights["lambda_ce"])
        )
        self.net = PaddedUNet(in_channels, features, dropout)
        self.patient_dice = torch.nn.ModuleDict({f"{s}_patients": PatientDice() for s in ("val", "test")})
        self.monitor = monitor
        self.best_monitored = MaxMetric()
        self.best_monitored.persistent(True)
        # Latest per-patient outputs per stage: {"patient", "counts", "dice"} on the CPU.
        self.patient_outputs: dict[str, dict[str, torch.Tensor]] = {}
        self.input_contract: dict[str, Any] | None = None
        self.training_patients: list[dict[str, str]] | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Tumour logits ``[B, 1, H, W]`` of images ``[B, C, H, W]``."""
        weight_dtype = next(self.net.parameters()).dtype
        if images.is_floating_point() and images.dtype != weight_dtype:
            images = images.to(weight_dtype)
        return self.net(images)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.input_contract is not None:
            checkpoint["input_contract"] = self.input_contract
        if self.training_patients is not None:
            checkpoint[TRAINING_PATIENTS] = self.training_patients

    def stage_predictions(self, stage: str) -> None:
        """No class predictions: a segmenter has no confusion matrix of grades."""
        return

    # ----------------------------------------------------------------- steps
    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        target = batch["mask"].to(logits.dtype)
        loss = self.loss_fn(logits, target)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            batch_size=len(target),
            sync_dist=stage != "train",
        )
        if f"{stage}_patients" in self.patient_dice:
            predicted = logits.detach().float().sigmoid() > THRESHOLD
            counts = slice_counts(predicted, batch["mask"] > 0)
            self.patient_dice[f"{stage}_patients"].update(counts, batch["patient"], batch["slice_index"])
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    # ------------------------------------------------------------ epoch ends
    def _log_patient_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        collected = self.patient_dice[f"{stage}_patients"]
        rows = collected.compute()
        collected.reset()
        patient, dice = rows["patient"].reshape(-1), rows["dice"].reshape(-1)
        if patient.numel() == 0:
            return {}
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        values = {
            f"{stage}/patient_dice": dice.mean(),
            f"{stage}/patient_dice_min": dice.min(),
            f"{stage}/patient_count": torch.tensor(float(len(patient))),
        }
        # Every rank computed the same values from the gathered states.
        values = {k: v.to(self.device, dtype) for k, v in values.items()}
        self.log_dict(values, sync_dist=True)
        self.patient_outputs[stage] = {
            "patient": patient.cpu(),
            "counts": rows["counts"].reshape(-1, 3).cpu(),
            "dice": dice.cpu(),
        }
        return values

    def on_validation_epoch_end(self) -> None:
        values = self._log_patient_metrics("val")
        if self.trainer.sanity_checking or self.monitor not in values:
            return
        self.best_monitored.update(values[self.monitor].float())
        self.log(f"{self.monitor}_best", self.best_monitored.compute(), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_patient_metrics("test")

    # ------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        """The classifier's optimisers and warm-up cosine schedule (``model.optimizer``/``scheduler``)."""
        return GradeClassifier.configure_optimizers(self)  # type: ignore[arg-type]

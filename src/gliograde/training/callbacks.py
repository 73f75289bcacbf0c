"""Callbacks that draw into TensorBoard: sample training slices, the test confusion matrix."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from gliograde.evaluation.figures import confusion_figure, sample_grid


def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


class SampleSlicesToTensorBoard(pl.Callback):
    """At the start of fitting, a grid of training slices: one row per sample, one column per
    modality, titled with patient, slice and label. Shows what the network is fed."""

    def __init__(self, max_samples: int = 8):
        self.max_samples = max_samples

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = _tensorboard(trainer)
        datamodule = trainer.datamodule
        if logger is None or datamodule is None or not trainer.is_global_zero:
            return
        dataset = datamodule.datasets["train"]
        count = min(self.max_samples, len(dataset))
        picks = np.linspace(0, len(dataset) - 1, count).astype(int).tolist()
        figure = sample_grid([dataset[i] for i in picks], datamodule.modalities, datamodule.classes)
        logger.experiment.add_figure("train/sample_slices", figure, global_step=0)
        plt.close(figure)


class TestConfusionMatrixToTensorBoard(pl.Callback):
    """After testing, the patient-level confusion matrix as an image."""

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = _tensorboard(trainer)
        outputs = pl_module.stage_predictions("test")
        if logger is None or not outputs or not trainer.is_global_zero:
            return
        classes = list(pl_module.hparams.get("class_names", []))
        labels = outputs["label"].numpy()
        predicted = outputs["probs"].argmax(dim=1).numpy()
        figure = confusion_figure(labels, predicted, classes)
        logger.experiment.add_figure("test/patient_confusion_matrix", figure, global_step=trainer.global_step)
        logger.experiment.flush()
        plt.close(figure)

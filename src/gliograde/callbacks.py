"""Callbacks that draw into TensorBoard: sample training slices, the test confusion matrix."""

from __future__ import annotations


import pytorch_lightning as pl
import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402


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
        batch = dataset.__getitems__(picks)
        figure = sample_grid(batch, datamodule.modalities, datamodule.classes)
        logger.experiment.add_figure("train/sample_slices", figure, global_step=0)
        plt.close(figure)


def sample_grid(batch: dict, modalities: tuple[str, ...], classes: tuple[str, ...]) -> plt.Figure:
    """A figure of ``batch['image']`` [B, C, H, W], rows = samples, columns = modalities."""
    images = batch["image"].float().numpy()
    rows, cols = images.shape[0], images.shape[1]
    figure, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for r in range(rows):
        label = int(batch["label"][r])
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(images[r, c], cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(modalities[c])
        axes[r][0].set_ylabel(
            f"{batch['patient_id'][r]}\nz={int(batch['slice_index'][r])} {classes[label] if label >= 0 else '?'}",
            fontsize=7,
        )
    figure.tight_layout()
    return figure


class TestConfusionMatrixToTensorBoard(pl.Callback):
    """After testing, the patient-level confusion matrix as an image."""

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = _tensorboard(trainer)
        outputs = getattr(pl_module, "patient_outputs", {}).get("test")
        if logger is None or not outputs or not trainer.is_global_zero:
            return
        classes = list(pl_module.hparams.get("class_names", []))
        labels = outputs["label"].numpy()
        predicted = outputs["probs"].argmax(dim=1).numpy()
        figure = confusion_figure(labels, predicted, classes)
        logger.experiment.add_figure("test/patient_confusion_matrix", figure, global_step=trainer.global_step)
        logger.experiment.flush()
        plt.close(figure)


def confusion_figure(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> plt.Figure:
    """A labelled confusion-matrix heat map (rows: true class, columns: predicted)."""
    matrix = confusion_matrix(labels, predicted, labels=list(range(len(classes))))
    figure, ax = plt.subplots(figsize=(3.2, 3.0))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("patients (test)")
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "black")
    figure.tight_layout()
    return figure

"""The figures of one evaluation: patient-level plots and Grad-CAM overlays, by file stem."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gliograde.data.batches.crops import centre_channels
from gliograde.evaluation import plots
from gliograde.evaluation.gradcam import grad_cam
from gliograde.evaluation.predict import Predictions
from gliograde.evaluation.progress import progress
from gliograde.models.backbones import cam_layer


def metric_figures(
    pred: Predictions,
    classes: list[str],
    threshold: float,
    split: str,
    uncalibrated: Predictions | None = None,
) -> dict[str, Any]:
    """Confusion matrix, reliability (before and after calibration when ``uncalibrated`` is given),
    probability strip and (both classes present) ROC."""
    if not pred.has_labels:
        return {}
    labels = pred.patient_labels
    positive = pred.patient_probs[:, 1]
    figures = {
        "confusion_matrix": plots.confusion_figure(
            labels, (positive >= threshold).astype(int), classes, f"patients ({split})"
        ),
        "reliability": plots.reliability_figure(
            labels, positive, uncalibrated=None if uncalibrated is None else uncalibrated.patient_probs[:, 1]
        ),
        "probability_strip": plots.strip_figure(labels, positive, classes, threshold),
    }
    if 0 < labels.sum() < len(labels):
        # ranked by the log-odds, as the AUROC in metrics.json: saturated probabilities would tie
        figures["roc"] = plots.roc_figure(labels, pred.patient_scores, "ROC (patients)")
    return figures


def gradcam_figures(
    model,
    dataset,
    modalities: tuple[str, ...],
    pred: Predictions,
    threshold: float,
    n: int,
    device: torch.device,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Overlays for the ``n`` most confident correct and ``n`` most confident wrong patients
    (the ``n`` most confident of all when labels are unknown); ``dataset`` is the one predicted.
    Each is drawn on the image the model saw (the crop, with a crop), the centre slice's
    channels when the model sees neighbouring slices."""
    if n <= 0:
        return {}
    positive = pred.patient_probs[:, 1]
    predicted = (positive >= threshold).astype(int)
    confidence = np.abs(positive - threshold)
    groups = {"all": np.arange(len(positive))}
    if pred.has_labels:
        correct = predicted == pred.patient_labels
        groups = {"correct": np.flatnonzero(correct), "wrong": np.flatnonzero(~correct)}
    picks = [
        (group, rank, int(i))
        for group, members in groups.items()
        for rank, i in enumerate(members[np.argsort(-confidence[members])][:n])
    ]
    classes = list(model.hparams.class_names)
    layer = cam_layer(model.net, model.hparams.backbone)
    figures = {}
    for group, rank, i in progress(picks, desc="Grad-CAM", enabled=show_progress):
        rows = np.flatnonzero(pred.slice_patient == i)
        best = rows[np.argmax(pred.probs[rows, predicted[i]])]  # the slice that speaks most for the call
        image = dataset[int(pred.rows[best])]["image"].float()
        heat = grad_cam(model, layer, image[None].to(device), int(predicted[i]))[0].cpu().numpy()
        truth = f", true {classes[pred.patient_labels[i]]}" if pred.patient_labels[i] >= 0 else ""
        title = (
            f"{pred.patients[i]} slice {int(pred.slice_index[best])}: predicted "
            f"{classes[predicted[i]]} (p({classes[-1]})={positive[i]:.2f}){truth}"
        )
        shown = image.numpy()[centre_channels(len(modalities), dataset.context)]
        figures[f"gradcam_{group}_{rank + 1}"] = plots.gradcam_figure(shown, heat, modalities, title)
    return figures

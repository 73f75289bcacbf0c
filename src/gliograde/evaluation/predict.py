"""Slice probabilities of one split, and their patient aggregate."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from gliograde.evaluation.progress import progress
from gliograde.inference.tta import views
from gliograde.models.patient_scores import patient_scores, positive_score


@dataclass
class Predictions:
    """Slice-level outputs of one split, and their patient-level aggregate."""

    patient_ids: list[str]  # per slice
    slice_index: np.ndarray
    labels: np.ndarray  # per slice, -1 when unknown
    probs: np.ndarray  # [N, K]
    rows: np.ndarray  # per slice: its index in the split's dataset
    patients: list[str]  # per patient (in cache order)
    patient_probs: np.ndarray  # [P, K]
    patient_labels: np.ndarray
    slices_per_patient: np.ndarray
    slice_patient: np.ndarray  # per slice: its row in the patient arrays
    logits: np.ndarray | None = None  # [N, V, K]: per slice and test-time view, before softmax
    method: str = "mean"  # how slices were aggregated per patient
    weights: np.ndarray | None = None  # per slice, for method="tumor_weighted"
    tta: str = "none"
    temperature: float = 1.0  # probs are the views' mean of softmax(logits / temperature)
    log_probs: np.ndarray | None = None  # [N, K] float64, of which probs is the exp
    patient_log_probs: np.ndarray | None = None  # [P, K] float64, of which patient_probs is the exp

    @property
    def slice_scores(self) -> np.ndarray:
        """Per slice, the class-1 log-odds that ranking metrics use (see
        :func:`gliograde.models.patient_scores.positive_score`)."""
        return positive_score(_log(self.log_probs, self.probs))

    @property
    def patient_scores(self) -> np.ndarray:
        """Per patient, the class-1 log-odds of its aggregate probability: what AUROC ranks."""
        return positive_score(_log(self.patient_log_probs, self.patient_probs))

    @property
    def has_labels(self) -> bool:
        """Whether every patient has a known class."""
        return bool((self.patient_labels >= 0).all())


def _log(log_probs: np.ndarray | None, probs: np.ndarray) -> np.ndarray:
    if log_probs is not None:
        return log_probs
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(probs, dtype=np.float64))


def from_logits(pred: Predictions, temperature: float = 1.0) -> Predictions:
    """``pred`` with its slice and patient probabilities computed from its logits at ``temperature``
    by :func:`gliograde.models.patient_scores.patient_scores`, the computation every command shares."""
    scores = patient_scores(pred.slice_patient, pred.logits, pred.method, pred.weights, temperature)
    return replace(
        pred,
        probs=np.exp(scores["slice_log_probs"]),
        log_probs=scores["slice_log_probs"],
        patient_probs=scores["probs"],
        patient_log_probs=scores["log_probs"],
        temperature=float(temperature),
    )


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    datamodule,
    split: str,
    method: str,
    device: torch.device,
    show_progress: bool = True,
    tta: str = "none",
) -> Predictions:
    """Run ``model`` over ``split`` of ``datamodule`` in order; aggregate per patient by ``method``.

    With ``tta`` each slice's probabilities are the mean over its views (see
    :mod:`gliograde.inference.tta`), before patients are aggregated.
    """
    loader = datamodule.dataloader(split)
    positions, ids, slices, labels, logits = [], [], [], [], []
    total = len(getattr(loader, "dataset", ())) or None
    bar = progress(desc=f"inference ({split})", total=total, unit="slices", enabled=show_progress)
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True).float()
        outputs = [model(view).float() for view in views(images, tta)]
        stacked = torch.stack(outputs, dim=1)
        logits.append(stacked.cpu().numpy())
        positions.append(batch["patient"].numpy())
        ids.extend(batch["patient_id"])
        slices.append(batch["slice_index"].numpy())
        labels.append(batch["label"].numpy())
        bar.update(len(batch["slice_index"]))
    bar.close()
    position = np.concatenate(positions)
    slice_index = np.concatenate(slices)
    label = np.concatenate(labels)
    logit = np.concatenate(logits)
    weights = tumour_area(datamodule, position, slice_index) if method == "tumor_weighted" else None
    scores = patient_scores(position, logit, method, weights)
    row = np.searchsorted(scores["patients"], position)
    first = np.unique(row, return_index=True)[1]  # each patient's first slice, in patient order
    return Predictions(
        patient_ids=ids,
        slice_index=slice_index,
        labels=label,
        probs=np.exp(scores["slice_log_probs"]),
        log_probs=scores["slice_log_probs"],
        rows=np.arange(len(logit)),  # the loader is sequential: the i-th slice is dataset row i
        patients=[ids[i] for i in first],
        patient_probs=scores["probs"],
        patient_log_probs=scores["log_probs"],
        patient_labels=label[first],
        slices_per_patient=scores["counts"],
        slice_patient=row,
        logits=logit,
        method=method,
        weights=weights,
        tta=tta,
    )


def tumour_area(datamodule, position: np.ndarray, slice_index: np.ndarray) -> np.ndarray:
    """Tumour voxels of each (patient position, slice) in the datamodule's plane."""
    areas = datamodule.cached.tumour_area[datamodule.slice_spec.plane]
    return areas[position, slice_index].astype(float)

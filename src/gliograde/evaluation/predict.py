"""Slice probabilities of one split, and their patient aggregate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gliograde.evaluation.aggregate import aggregate
from gliograde.evaluation.progress import progress
from gliograde.inference.tta import average_views, views


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

    @property
    def has_labels(self) -> bool:
        """Whether every patient has a known class."""
        return bool((self.patient_labels >= 0).all())


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
    positions, ids, slices, labels, logits, probs = [], [], [], [], [], []
    total = len(getattr(loader, "dataset", ())) or None
    bar = progress(desc=f"inference ({split})", total=total, unit="slices", enabled=show_progress)
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True).float()
        outputs = [model(view).float() for view in views(images, tta)]
        stacked = torch.stack(outputs, dim=1)
        logits.append(stacked.cpu().numpy())
        probs.append(average_views(stacked).cpu().numpy())  # on the model's device, as without TTA
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
    prob = np.concatenate(probs)
    weights = tumour_area(datamodule, position, slice_index) if method == "tumor_weighted" else None
    unique, patient_probs, counts = aggregate(position, prob, method, weights)
    row = np.searchsorted(unique, position)
    first = np.unique(row, return_index=True)[1]  # each patient's first slice, in patient order
    return Predictions(
        patient_ids=ids,
        slice_index=slice_index,
        labels=label,
        probs=prob,
        rows=np.arange(len(prob)),  # the loader is sequential: the i-th slice is dataset row i
        patients=[ids[i] for i in first],
        patient_probs=patient_probs,
        patient_labels=label[first],
        slices_per_patient=counts,
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

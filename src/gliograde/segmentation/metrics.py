"""Per-patient 3D Dice from per-slice confusion counts, gathered across processes."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from gliograde.models.patient_metrics import _first_occurrence


def slice_counts(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B, 3]`` int64 (TP, FP, FN) of bool/0-1 masks ``[B, 1, H, W]`` (MONAI's confusion matrix)."""
    from monai.metrics import get_confusion_matrix

    matrix = get_confusion_matrix(predicted.float(), target.float(), include_background=True)  # [B, 1, 4]
    tp, fp, _, fn = matrix[:, 0].unbind(-1)
    return torch.stack([tp, fp, fn], dim=1).round().long()


def dice(counts: torch.Tensor) -> torch.Tensor:
    """Dice ``2TP / (2TP + FP + FN)`` of ``[P, 3]`` counts, float64; 1 where there is no tumour
    and none is predicted."""
    tp, fp, fn = counts.double().unbind(-1)
    denominator = 2 * tp + fp + fn
    return torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.ones_like(tp))


class PatientDice(Metric):
    """Collects per-slice (TP, FP, FN) with their (patient, slice) and sums them per patient.

    States are concatenated across processes on ``compute``; a (patient, slice) pair seen twice
    (a DistributedSampler pads its last batch by repeating samples) counts once.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("patient", default=[], dist_reduce_fx="cat")
        self.add_state("slice_index", default=[], dist_reduce_fx="cat")
        self.add_state("counts", default=[], dist_reduce_fx="cat")

    def update(self, counts: torch.Tensor, patient: torch.Tensor, slice_index: torch.Tensor) -> None:
        self.counts.append(counts.detach())
        self.patient.append(patient.detach())
        self.slice_index.append(slice_index.detach())

    def compute(self) -> dict[str, torch.Tensor]:
        """Per patient, sorted: ``patient`` [P], ``counts`` [P, 3] (TP, FP, FN) and ``dice`` [P]."""
        patient, slice_index, counts = (_cat(s) for s in (self.patient, self.slice_index, self.counts))
        if patient.numel() == 0:
            return {"patient": patient.long(), "counts": counts.reshape(0, 3).long(), "dice": torch.zeros(0)}
        counts = counts.reshape(-1, 3)
        first = _first_occurrence(torch.stack([patient.reshape(-1), slice_index.reshape(-1)], dim=1))
        patient, counts = patient.reshape(-1)[first].cpu(), counts[first].cpu()
        patients, inverse = torch.unique(patient, return_inverse=True)
        totals = torch.zeros(len(patients), 3, dtype=torch.long).index_add_(0, inverse, counts.long())
        return {"patient": patients, "counts": totals, "dice": dice(totals)}


def _cat(state) -> torch.Tensor:
    if isinstance(state, torch.Tensor):
        return state
    return torch.cat(state) if state else torch.empty(0)

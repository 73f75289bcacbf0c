"""Patient-level aggregation and metrics: a grade call is made per patient, not per slice."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_f1_score,
    multiclass_recall,
    multiclass_specificity,
)

from gliograde.evaluation.metrics import binary_metrics
from gliograde.models.patient_scores import patient_scores

BINARY = ("accuracy", "balanced_accuracy", "auroc", "f1", "sensitivity", "specificity")


class PatientProbabilities(Metric):
    """Collects slice logits and reduces them to one probability per patient, the mean of its
    slice probabilities, as :func:`gliograde.models.patient_scores.patient_scores` computes it for
    every command (float64, from logits: confident slices never round to a tie).

    States are concatenated across processes on ``compute``; duplicate (patient, slice)
    pairs (a DistributedSampler pads its last batch by repeating samples) count once.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("patient", default=[], dist_reduce_fx="cat")
        self.add_state("slice_index", default=[], dist_reduce_fx="cat")
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("label", default=[], dist_reduce_fx="cat")

    def update(
        self, logits: torch.Tensor, label: torch.Tensor, patient: torch.Tensor, slice_index: torch.Tensor
    ) -> None:
        self.logits.append(logits.detach().float())
        self.label.append(label.detach())
        self.patient.append(patient.detach())
        self.slice_index.append(slice_index.detach())

    def compute(self) -> dict[str, torch.Tensor]:
        """Each (patient, slice) once: ``slice_probs`` [N, K], ``slice_label`` [N]; and per
        patient, sorted: ``patient`` [P], mean ``probs`` [P, K] (float64), ``label`` [P]. With
        two classes also the ranking scores ``score`` [P] and ``slice_score`` [N] (log-odds)."""
        patient, slice_index, logits, label = (
            _cat(s) for s in (self.patient, self.slice_index, self.logits, self.label)
        )
        if patient.numel() == 0:
            empty = {"patient": patient, "probs": logits, "label": label}
            return {**empty, "slice_probs": logits, "slice_label": label}
        first = _first_occurrence(torch.stack([patient, slice_index], dim=1))
        patient, logits, label = patient[first].cpu(), logits[first].cpu(), label[first].cpu()
        scores = patient_scores(patient.numpy(), logits.double().numpy())
        patients = torch.from_numpy(scores["patients"])
        inverse = torch.from_numpy(np.searchsorted(scores["patients"], patient.numpy()))
        labels = torch.zeros(len(patients), dtype=label.dtype).scatter_(0, inverse, label)
        out = {
            "patient": patients,
            "probs": torch.from_numpy(scores["probs"]),
            "label": labels,
            "slice_probs": torch.from_numpy(np.exp(scores["slice_log_probs"])),
            "slice_label": label,
        }
        if "score" in scores:
            out["score"] = torch.from_numpy(scores["score"])
            out["slice_score"] = torch.from_numpy(scores["slice_score"])
        return out

    def rows(self) -> dict[str, torch.Tensor]:
        """:meth:`compute` with every row tensor 1-D or 2-D, whatever the number of rows.

        torchmetrics squeezes one-element results to 0-d, so a stage of one patient (or one
        slice) would otherwise lose its row dimension.
        """
        values = self.compute()
        if values["patient"].numel() == 0:
            return values
        width = values["probs"].shape[-1]
        return {
            key: value.reshape(-1, width) if key.endswith("probs") else value.reshape(-1)
            for key, value in values.items()
        }


def _cat(state) -> torch.Tensor:
    if isinstance(state, torch.Tensor):
        return state
    return torch.cat(state) if state else torch.empty(0)


def _first_occurrence(rows: torch.Tensor) -> torch.Tensor:
    """Index of each distinct row's first occurrence."""
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    positions = torch.arange(len(rows), device=rows.device)
    first = torch.full((len(unique),), len(rows), device=rows.device, dtype=torch.long)
    return first.scatter_reduce_(0, inverse, positions, reduce="amin")


def classification_metrics(
    probs: torch.Tensor, labels: torch.Tensor, prefix: str, scores: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Accuracy, balanced accuracy, AUROC, F1, sensitivity and specificity of ``probs`` [N, K].

    With two classes, class 1 is positive (HGG in the BraTS presets): sensitivity is its
    recall, specificity the recall of class 0, and the values are evaluate.py's own
    (:func:`gliograde.evaluation.metrics.binary_metrics`, calls at ``p >= 0.5``, AUROC ranking
    ``scores`` when given), float64. A rate over an absent class is NaN. With more classes,
    macro averages over classes.
    """
    num_classes = probs.shape[1]
    labels = labels.long()
    if num_classes == 2:
        ranking = None if scores is None else scores.detach().cpu().double().numpy()
        values = binary_metrics(
            labels.cpu().numpy(), probs[:, 1].detach().cpu().double().numpy(), 0.5, ranking
        )
        return {f"{prefix}{name}": torch.tensor(values[name], dtype=torch.float64) for name in BINARY}
    values = {
        "accuracy": multiclass_accuracy(probs, labels, num_classes, average="micro"),
        "balanced_accuracy": multiclass_recall(probs, labels, num_classes, average="macro"),
        "auroc": multiclass_auroc(probs, labels, num_classes, average="macro"),
        "f1": multiclass_f1_score(probs, labels, num_classes, average="macro"),
        "sensitivity": multiclass_recall(probs, labels, num_classes, average="macro"),
        "specificity": multiclass_specificity(probs, labels, num_classes, average="macro"),
    }
    return {f"{prefix}{name}": value.float() for name, value in values.items()}

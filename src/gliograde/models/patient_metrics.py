"""Patient-level aggregation and metrics: a grade call is made per patient, not per slice."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_f1_score,
    binary_recall,
    binary_specificity,
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_f1_score,
    multiclass_recall,
    multiclass_specificity,
)


class PatientProbabilities(Metric):
    """Collects slice probabilities and reduces them to one mean probability per patient.

    States are concatenated across processes on ``compute``; duplicate (patient, slice)
    pairs (a DistributedSampler pads its last batch by repeating samples) count once.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("patient", default=[], dist_reduce_fx="cat")
        self.add_state("slice_index", default=[], dist_reduce_fx="cat")
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("label", default=[], dist_reduce_fx="cat")

    def update(
        self, probs: torch.Tensor, label: torch.Tensor, patient: torch.Tensor, slice_index: torch.Tensor
    ) -> None:
        self.probs.append(probs.detach().float())
        self.label.append(label.detach())
        self.patient.append(patient.detach())
        self.slice_index.append(slice_index.detach())

    def compute(self) -> dict[str, torch.Tensor]:
        """Each (patient, slice) once: ``slice_probs`` [N, K], ``slice_label`` [N]; and per
        patient, sorted: ``patient`` [P], mean ``probs`` [P, K], ``label`` [P]."""
        patient, slice_index, probs, label = (
            _cat(s) for s in (self.patient, self.slice_index, self.probs, self.label)
        )
        if patient.numel() == 0:
            empty = {"patient": patient, "probs": probs, "label": label}
            return {**empty, "slice_probs": probs, "slice_label": label}
        first = _first_occurrence(torch.stack([patient, slice_index], dim=1))
        patient, probs, label = patient[first], probs[first], label[first]
        patients, inverse = torch.unique(patient, return_inverse=True)
        sums = torch.zeros(len(patients), probs.shape[1], device=probs.device).index_add_(0, inverse, probs)
        counts = torch.bincount(inverse, minlength=len(patients)).unsqueeze(1)
        labels = torch.zeros(len(patients), dtype=label.dtype, device=label.device).scatter_(
            0, inverse, label
        )
        return {
            "patient": patients,
            "probs": sums / counts,
            "label": labels,
            "slice_probs": probs,
            "slice_label": label,
        }


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


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    """Accuracy, balanced accuracy, AUROC, F1, sensitivity and specificity of ``probs`` [N, K].

    With two classes, class 1 is positive (HGG in the BraTS presets): sensitivity is its
    recall, specificity the recall of class 0. With more, macro averages over classes.
    """
    num_classes = probs.shape[1]
    labels = labels.long()
    if num_classes == 2:
        # A rate over a class that is absent is undefined (NaN), as in evaluate.py's report.
        nan = torch.tensor(float("nan"))
        has_pos, has_neg = bool((labels == 1).any()), bool((labels == 0).any())
        positive = probs[:, 1]
        sensitivity = binary_recall(positive, labels) if has_pos else nan
        specificity = binary_specificity(positive, labels) if has_neg else nan
        values = {
            "accuracy": multiclass_accuracy(probs, labels, num_classes, average="micro"),
            "balanced_accuracy": (sensitivity + specificity) / 2,
            "auroc": binary_auroc(positive, labels) if has_pos and has_neg else nan,
            "f1": binary_f1_score(positive, labels),
            "sensitivity": sensitivity,
            "specificity": specificity,
        }
    else:
        values = {
            "accuracy": multiclass_accuracy(probs, labels, num_classes, average="micro"),
            "balanced_accuracy": multiclass_recall(probs, labels, num_classes, average="macro"),
            "auroc": multiclass_auroc(probs, labels, num_classes, average="macro"),
            "f1": multiclass_f1_score(probs, labels, num_classes, average="macro"),
            "sensitivity": multiclass_recall(probs, labels, num_classes, average="macro"),
            "specificity": multiclass_specificity(probs, labels, num_classes, average="macro"),
        }
    return {f"{prefix}{name}": value.float() for name, value in values.items()}

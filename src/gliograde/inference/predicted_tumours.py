"""predict.py's ``segmenter=``: a patient without a mask file gets the segmenter's mask, from
its preprocessed volume, in place of the mask it lacks; one in whom the segmenter finds no
tumour is reported as such, not graded; ``save_masks=true`` writes each predicted mask as NIfTI
on its scan's grid."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from gliograde.contract.input_contract import grid_mismatch, grid_of
from gliograde.data.caching.preprocess import SliceAreas, stored_modalities
from gliograde.inference.figures import safe_name
from gliograde.inference.inputs import PatientFiles
from gliograde.inference.mask_nifti import MASK_SUFFIX, write_mask
from gliograde.inference.stream import model_grid_affine
from gliograde.segmentation.predicted import (
    MIN_TUMOUR_ML,
    PredictedTumour,
    SegmentsVolumes,
    grid_spacing,
    predict_tumour,
)

NO_TUMOUR_RULE = "no tumour found"


class NoTumourFound(Exception):
    """The segmenter found no tumour in a patient: a result to report, not an error."""

    def __init__(self, patient: str, predicted: PredictedTumour, areas: SliceAreas):
        super().__init__(f"patient {patient}: {predicted.not_found()}")
        self.patient = patient
        self.predicted = predicted
        self.areas = areas


class TumourPredictor:
    """The stream's tumour source (see ``inference.stream.load_patient``) for one segmenter."""

    def __init__(
        self, segmenter: SegmentsVolumes, contract: Mapping[str, Any], source: str, min_ml: float = MIN_TUMOUR_ML
    ):
        self.segmenter = segmenter
        self.contract = contract
        self.source = source
        self.min_ml = min_ml
        self.stored = stored_modalities(contract["modalities"])
        self.spacing = grid_spacing(contract)
        self.predicted: dict[str, PredictedTumour] = {}
        self.predicted_ml: dict[str, float | None] = {}
        self.no_tumour: dict[str, str] = {}

    def __call__(
        self, patient: str, volume: np.ndarray, areas: SliceAreas
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        predicted = predict_tumour(self.segmenter, volume, self.stored, self.spacing, self.min_ml)
        self.predicted[patient] = predicted
        self.predicted_ml[patient] = predicted.ml
        if not predicted.found:
            self.no_tumour[patient] = predicted.not_found()
            raise NoTumourFound(patient, predicted, areas)
        return predicted.measures.areas, predicted.measures.boxes

    def take(self, patient: str) -> PredictedTumour | None:
        """The patient's prediction, forgotten here (a full-grid mask per patient adds up)."""
        return self.predicted.pop(patient, None)

    def save_mask(self, predicted: PredictedTumour, files: PatientFiles, folder: Path) -> str:
        """Write ``predicted``'s mask beside the report, on the grid of the patient's scan; return
        the file name."""
        reference, model_grid = scan_grid(files, self.contract)
        name = f"{safe_name(files.patient_id)}{MASK_SUFFIX}"
        write_mask(predicted.mask, folder / name, reference, self.contract["preprocess"]["reorient"], model_grid)
        return name

    def report(self) -> dict[str, Any]:
        """predictions.json's ``segmenter`` entry."""
        test_dice = getattr(self.segmenter, "test_dice", None)
        return {
            "source": self.source,
            "checkpoint": str(getattr(self.segmenter, "path", "")),
            "test_dice": test_dice,
            "patients_segmented": len(self.predicted_ml),
            "predicted_ml": self.predicted_ml,
            "no_tumour": self.no_tumour,
            "min_tumour_ml": self.min_ml,
        }


def scan_grid(
    files: PatientFiles, contract: Mapping[str, Any]
) -> tuple[Path, tuple[np.ndarray, tuple[int, int, int]] | None]:
    """The scan a predicted mask is written on (the first of the model's modalities) and, where
    predict resampled the patient onto the model's grid, that grid's (affine, shape): as
    ``stream.load_patient`` decides it, any of the patient's volumes off the grid resamples all."""
    reorient = contract["preprocess"]["reorient"]
    stored = stored_modalities(contract["modalities"])
    reference = files.modalities[stored[0]]
    image = nib.load(str(reference))
    others = [nib.load(str(files.modalities[m])) for m in stored[1:]]
    if files.mask is not None:
        others.append(nib.load(str(files.mask)))
    off_grid = contract.get("grid") and any(
        grid_mismatch(contract, grid_of(volume.affine, volume.shape[:3], reorient)) for volume in [image, *others]
    )
    if not off_grid:
        return reference, None
    if len(image.shape) == 4:
        image = image.slicer[..., 0]
    shape = tuple(int(s) for s in contract["grid"]["shape"])
    return reference, (model_grid_affine(image, contract), shape)

"""evaluate.py's ``segmenter=``: every patient of the prepared cohort without a tumour mask gets
the segmenter's mask, from its cached volume, before slices are selected; a patient in whom
the segmenter finds no tumour is left out of the grading and reported."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from gliograde.data.pipeline.prepared import PreparedCohort, Tumour
from gliograde.evaluation.progress import progress
from gliograde.segmentation.predicted import MIN_TUMOUR_ML, SegmentsVolumes, grid_spacing, mask_ml, predict_tumour

log = logging.getLogger(__name__)


@dataclass
class SuppliedTumours:
    """What the segmenter gave: predicted volume (mL) per patient, and those without a tumour."""

    predicted_ml: dict[str, float | None] = field(default_factory=dict)
    no_tumour: dict[str, str] = field(default_factory=dict)  # patient -> why not graded


def supply_tumours(
    prepared: PreparedCohort,
    segmenter: SegmentsVolumes,
    contract: dict[str, Any],
    show: bool = True,
    min_ml: float = MIN_TUMOUR_ML,
    only: set[str] | None = None,
) -> SuppliedTumours:
    """Segment the loaded cohort's usable patients without a mask and hand their tumours to
    ``prepared`` (between its ``load`` and ``select``). With ``only``, the patients outside it are
    neither segmented nor graded (the splits an evaluation does not look at)."""
    cached = prepared.cached
    assert cached is not None and prepared.cohort is not None
    excluded = {err.patient for err in prepared.skipped if err.patient}
    todo = []
    for position, patient_id in enumerate(cached.patient_ids):
        if patient_id in excluded or cached.has_mask[position]:
            continue
        if only is not None and patient_id not in only:
            prepared.ungraded[patient_id] = "not in the evaluated splits"
            continue
        todo.append((position, patient_id))
    spacing = grid_spacing(contract)
    stored = tuple(cached.modalities)
    supplied = SuppliedTumours()
    tumours: dict[str, Tumour] = {}
    for position, patient_id in progress(todo, desc="segmenting", unit="patient", enabled=show):
        predicted = predict_tumour(segmenter, cached.volume(position), stored, spacing, min_ml)
        supplied.predicted_ml[patient_id] = predicted.ml
        if not predicted.found:
            why = predicted.not_found()
            supplied.no_tumour[patient_id] = why
            prepared.ungraded[patient_id] = why  # after the split: the others keep their splits
            log.warning("Patient %s: %s", patient_id, why)
            continue
        tumours[patient_id] = Tumour(predicted.measures.areas, predicted.measures.boxes)
    prepared.apply_tumours(tumours)
    return supplied


def tumour_volumes(prepared: PreparedCohort, contract: dict[str, Any], supplied: SuppliedTumours | None) -> dict[str, float | None]:
    """Each usable patient's tumour volume in mL: its mask's, or the segmenter's prediction."""
    cached = prepared.cached
    assert cached is not None
    spacing = grid_spacing(contract)
    volumes: dict[str, float | None] = {}
    predicted = supplied.predicted_ml if supplied else {}
    for position, patient_id in enumerate(cached.patient_ids):
        if patient_id in predicted:
            volumes[patient_id] = predicted[patient_id]
        elif cached.has_mask[position]:
            volumes[patient_id] = mask_ml(int(cached.tumour_area["axial"][position].sum()), spacing)
    return volumes


def segmenter_report(source: str, supplied: SuppliedTumours, min_ml: float = MIN_TUMOUR_ML) -> dict[str, Any]:
    """The report's ``segmenter`` entry: which one, the predicted volumes, who was not graded."""
    return {
        "source": str(source),
        "patients_segmented": len(supplied.predicted_ml),
        "predicted_ml": supplied.predicted_ml,
        "no_tumour": supplied.no_tumour,
        "min_tumour_ml": min_ml,
    }

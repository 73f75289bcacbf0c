"""A group of prepared patients served from the cache as one ``SliceDataset``: their selected
slices, with the crop centre of each and the rule that placed it."""

from __future__ import annotations

import numpy as np
import torch

from gliograde.data.batches.crops import crop_centres, normal_length
from gliograde.data.batches.dataset import SliceDataset
from gliograde.data.caching.reader import CachedCohort
from gliograde.data.pipeline.options import DataOptions
from gliograde.data.pipeline.prepared import PatientSlices

TRANSFER_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def slice_dataset(
    cached: CachedCohort, opts: DataOptions, group: list[PatientSlices], crop_rules: dict[str, str]
) -> SliceDataset:
    """The slices of ``group`` as read from ``cached`` under ``opts``; each patient's crop rule
    goes to ``crop_rules``."""
    counts = [len(p.slices) for p in group]
    positions = np.repeat([p.position for p in group], counts)
    plane = opts.slice_spec.plane
    return SliceDataset(
        volumes_path=cached.volumes_path,
        layout=cached.layout,
        slots=cached.slots[positions],
        patient_positions=positions,
        slice_indices=np.concatenate([p.slices for p in group]),
        labels=np.repeat([p.label for p in group], counts),
        patient_ids=cached.patient_ids,
        modalities=opts.modalities,
        plane=plane,
        dtype=TRANSFER_DTYPES[opts.transfer_dtype],
        stored=cached.modalities,
        context=opts.context,
        depth=normal_length(cached.shape, plane),
        crop_size=None if opts.crop_spec.mode == "none" else opts.crop_spec.size,
        centres=_crop_centres(cached, opts, group, crop_rules),
    )


def _crop_centres(
    cached: CachedCohort, opts: DataOptions, group: list[PatientSlices], crop_rules: dict[str, str]
) -> np.ndarray | None:
    """One crop centre per slice of ``group`` (None without a crop)."""
    mode = opts.crop_spec.mode
    if mode == "none":
        return None
    plane = opts.slice_spec.plane
    channels = cached.channels_of(opts.modalities)
    centres = []
    for patient in group:
        position = patient.position
        tumour = cached.tumour_boxes[plane][position]  # all -1 without a mask
        brain = cached.brain_boxes[plane][position]
        placed, rule = crop_centres(mode, patient.slices, tumour, brain, channels)
        crop_rules[patient.patient_id] = rule
        centres.append(placed)
    return np.concatenate(centres) if centres else np.zeros((0, 2), dtype=np.int64)

"""One patient's scanner-space series into the model's space: bias-corrected, each series
rigidly registered to a reference series, the reference rigidly to the template, resampled once
onto the model grid at 1 mm and skull-stripped; where a thick-slice series saw the brain's surface
mixed with what surrounds it, that surface is left out (``partial_volume``)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from gliograde.data.errors import DataError
from gliograde.ingest import registration as reg
from gliograde.ingest.partial_volume import wholly_acquired_brain
from gliograde.ingest.template import Template

REFERENCE_ORDER: tuple[str, ...] = ("t1ce", "t1", "t2", "flair")
"""The reference series when the asked one is missing: the first one present."""


@dataclass
class Ingested:
    """A patient on the model grid: volumes (float32, zero outside the brain), the brain mask,
    the transforms (ITK resampling convention), the reference used, notes and raw scores."""

    volumes: dict[str, sitk.Image]
    brain: sitk.Image
    transforms: dict[str, sitk.Transform]
    reference: str
    notes: list[str] = field(default_factory=list)
    scores: dict = field(default_factory=dict)


def to_model_space(
    images: Mapping[str, sitk.Image],
    template: Template,
    *,
    reference: str = "t1ce",
    brain_mask: sitk.Image | None = None,
    n4: bool = True,
) -> Ingested:
    """Register ``images`` (modality -> scanner-space image) to the template and resample them
    onto its model grid. ``brain_mask`` (in the reference's scanner space) replaces the brain
    found from the template (and is kept as given); ``n4`` corrects each series' bias field."""
    if not images:
        raise DataError("no series to bring into the model's space")
    notes: list[str] = []
    chosen = _reference(images, reference, template)
    if chosen != reference:
        where = "" if reference not in images else " in the template"
        notes.append(f"no {reference}{where}: registered to {chosen}")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    coarse: dict[str, sitk.Image] = {}
    heads: dict[str, sitk.Image] = {}
    log_bias: dict[str, sitk.Image] = {}
    spacing = reg.registration_spacing(images[chosen])
    for modality, image in images.items():
        small = reg.registration_image(image, spacing)
        heads[modality] = reg.head_mask(small)
        if n4:
            log_bias[modality] = reg.n4_log_bias(small, heads[modality])
            small = sitk.Cast(small / sitk.Exp(log_bias[modality]), sitk.sitkFloat32)
        coarse[modality] = small
    timings["n4_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    with _registering(f"{chosen} to the template"):
        to_template = reg.rigid_to_template(template.images[chosen], template.brain, coarse[chosen], heads[chosen])
    transforms: dict[str, sitk.Transform] = {f"{chosen}_to_template": to_template.transform}
    scores: dict = {"reference": chosen, "template_metric": to_template.metric, "series": {}}
    timings["template_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    for modality in images:
        if modality == chosen:
            continue
        with _registering(f"{modality} to {chosen}"):
            fit = reg.rigid_to_reference(coarse[chosen], coarse[modality], heads[chosen])
            flipped = reg.mirrored_fit(coarse[chosen], coarse[modality], fit, heads[chosen], heads[modality])
        transforms[f"{modality}_to_{chosen}"] = fit.transform
        scores["series"][modality] = {"metric": fit.metric, "mirrored_metric": flipped.metric}
    timings["series_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    grid = template.grid
    volumes: dict[str, sitk.Image] = {}
    to_series: dict[str, sitk.Transform] = {}
    for modality, image in images.items():
        transform = to_template.transform
        if modality != chosen:
            # Model point -> reference point -> this series' point (the last listed runs first).
            transform = sitk.CompositeTransform([transforms[f"{modality}_to_{chosen}"], to_template.transform])
        to_series[modality] = transform
        # Cubic B-spline, not linear: linear interpolation at sub-voxel offsets halves the noise a
        # model learnt from (one half-voxel shift moved a trained classifier's p(HGG) from 0.98 to 0.31);
        # its overshoot below zero is clipped (magnitude images).
        volume = sitk.Resample(
            sitk.Cast(image, sitk.sitkFloat32), grid, transform, sitk.sitkBSpline, 0.0, sitk.sitkFloat32
        )
        volume = sitk.Threshold(volume, 0.0, float(np.finfo(np.float32).max), 0.0)
        if modality in log_bias:
            bias = sitk.Resample(log_bias[modality], grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            volume = sitk.Cast(volume / sitk.Exp(bias), sitk.sitkFloat32)
        volumes[modality] = volume
    brain = _brain(template, volumes[chosen], chosen, brain_mask, to_template.transform)
    if brain_mask is None:  # a given mask wins as it is
        whole = brain
        brain = wholly_acquired_brain(brain, [(images[m], to_series[m]) for m in images])
        scores["partial_volume_ml"] = _ml(whole) - _ml(brain)  # brain seen only in part by a series' voxels
    for modality in volumes:
        volumes[modality] = sitk.Mask(volumes[modality], brain)
    timings["resample_s"] = time.perf_counter() - clock
    scores["timings"] = timings
    return Ingested(
        volumes=volumes, brain=brain, transforms=transforms, reference=chosen, notes=notes, scores=scores
    )


def _ml(mask: sitk.Image) -> float:
    """A binary mask's volume in mL."""
    return float(sitk.GetArrayViewFromImage(mask).sum() * np.prod(mask.GetSpacing()) / 1000.0)


@contextmanager
def _registering(what: str) -> Iterator[None]:
    """An ITK failure of one registration (e.g. images that do not overlap at all) as one line."""
    try:
        yield
    except RuntimeError as err:
        if "ITK ERROR" not in str(err):
            raise
        reason = str(err).split("ITK ERROR", 1)[1].split(":", 1)[-1].strip().split(".")[0]
        raise DataError(
            f"registering {what} failed ({reason}): look at that series' header (position, orientation)"
        ) from None


def _reference(images: Mapping[str, sitk.Image], wanted: str, template: Template) -> str:
    for modality in (wanted, *REFERENCE_ORDER, *images):
        if modality in images and modality in template.images:
            return modality
    raise DataError(
        f"none of the series ({', '.join(images)}) is a modality of the template "
        f"({', '.join(template.images)})"
    )


DARK_OUTSIDE: tuple[str, ...] = ("t1ce", "t1")
"""Reference modalities in which what surrounds the brain (CSF, skull) is darker than the brain,
so a threshold refines the template's brain."""
_BRAIN_FRACTION = 0.5  # of the median inside the template's brain: brain tissue is brighter


def _brain(
    template: Template,
    reference: sitk.Image,
    modality: str,
    given: sitk.Image | None,
    to_template: sitk.Transform,
) -> sitk.Image:
    """The brain on the model grid: the given mask carried over; else the template's brain
    probability (> 0.5), refined on T1-weighted references (on the template's coarser grid):
    template brain's core, plus what is bright enough near the template's brain, opened, the
    largest piece, holes filled."""
    grid = template.grid
    if given is not None:
        mask = sitk.Resample(given, grid, to_template, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return sitk.Cast(mask > 0, sitk.sitkUInt8)
    probability = template.brain
    if modality in DARK_OUTSIDE:
        factor = [int(round(t / g)) for t, g in zip(probability.GetSpacing(), grid.GetSpacing())]
        shrunk = sitk.BinShrink(reference, factor)
        coarse = sitk.Resample(shrunk, probability, sitk.Transform(), sitk.sitkLinear, 0.0)
        values = sitk.GetArrayViewFromImage(coarse)[sitk.GetArrayViewFromImage(probability) > 0.5]
        if values.size:
            bright = coarse > _BRAIN_FRACTION * float(np.median(values))
            core = sitk.BinaryErode(sitk.Cast(probability > 0.5, sitk.sitkUInt8), [2, 2, 2])
            mask = sitk.Cast((probability > 0.02) & bright, sitk.sitkUInt8) | core
            mask = sitk.BinaryMorphologicalOpening(mask, [1, 1, 1])
            mask = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True) == 1
            probability = sitk.Cast(sitk.BinaryFillhole(mask), sitk.sitkFloat32)
    fine = sitk.Resample(probability, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.Cast(fine > 0.5, sitk.sitkUInt8)

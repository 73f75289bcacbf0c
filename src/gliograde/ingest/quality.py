"""How well a patient fits the model's space: each series against the template and against the
reference series, a left-right mirror check, and the brain's volume."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import SimpleITK as sitk

from gliograde.errors import ConfigError
from gliograde.ingest.model_space import Ingested
from gliograde.ingest.template import Template

DEFAULT_THRESHOLDS: dict[str, float] = {
    "min_reference_template_ncc": 0.40,
    "min_template_ncc": 0.05,
    "min_agreement": 0.24,
    "mirror_margin": 0.10,
    "min_brain_fraction": 0.6,
    "max_brain_fraction": 1.5,
}
"""Calibrated on the synthetic generator with ``python -m benchmarks.ingest_accuracy`` (10
patients at full size: agreement 0.27-0.42 for good series, 0.18-0.22 for another patient's or
a flipped one; mirror gain below -0.3 for good series, about 0.25 for flipped ones; template NCC
0.58-0.79 for the T1ce reference, down to 0.16 for FLAIR, whose tumours the mean image lacks):
``min_reference_template_ncc`` and ``min_template_ncc``: NCC inside the template's brain between
the reference (another series) and the template's mean image of its modality, which a failed
registration to the template lowers; ``min_agreement``: normalised mutual information (0 none, 1 the same
picture) between a series and the reference inside the brain; ``mirror_margin``: how much
better (in Mattes mutual information) the mirrored series must fit to call it flipped;
``min_brain_fraction`` and ``max_brain_fraction``: the brain's volume against the template's
(the mean training brain), so the check holds for any model's space and head size."""

_BINS = 32


@dataclass
class Quality:
    """One row per modality, the brain's volume, the failed checks (short lines), pass/fail."""

    rows: pd.DataFrame
    brain_ml: float
    failed: list[str] = field(default_factory=list)
    passed: bool = True


def check_quality(
    ingested: Ingested, template: Template, thresholds: Mapping[str, float] | None = None
) -> Quality:
    """Check every series of ``ingested``; ``thresholds`` override :data:`DEFAULT_THRESHOLDS`."""
    limits = {**DEFAULT_THRESHOLDS, **dict(thresholds or {})}
    unknown = sorted(set(limits) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise ConfigError(
            f"unknown quality threshold(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_THRESHOLDS)}"
        )
    factor = [int(round(t / g)) for t, g in zip(template.brain.GetSpacing(), template.grid.GetSpacing())]
    inside = sitk.GetArrayViewFromImage(template.brain) > 0.5
    shrunk = sitk.BinShrink(sitk.Cast(ingested.brain, sitk.sitkFloat32), factor)
    brain = sitk.GetArrayViewFromImage(shrunk) > 0.5
    inside = inside & brain[: inside.shape[0], : inside.shape[1], : inside.shape[2]]
    coarse = {m: sitk.GetArrayFromImage(sitk.BinShrink(v, factor)) for m, v in ingested.volumes.items()}
    fine_brain = sitk.GetArrayViewFromImage(ingested.brain) > 0
    fine = {m: sitk.GetArrayViewFromImage(v)[fine_brain] for m, v in ingested.volumes.items()}
    reference = ingested.reference
    failed: list[str] = []
    rows = []
    for modality, values in coarse.items():
        row: dict = {"modality": modality, "reference": modality == reference}
        if modality in template.images:
            mean = sitk.GetArrayViewFromImage(template.images[modality])
            row["template_ncc"] = _ncc(values[inside], mean[inside])
        else:
            row["template_ncc"] = float("nan")
        series = ingested.scores.get("series", {}).get(modality)
        if series is None:
            row["agreement"], row["mirror_gain"], row["mirrored_better"] = float("nan"), float("nan"), False
        else:
            row["agreement"] = _nmi(fine[modality], fine[reference])
            # Mattes metrics are negative; a mirrored fit lower by the margin fits clearly better.
            row["mirror_gain"] = float(series["metric"] - series["mirrored_metric"])
            row["mirrored_better"] = bool(row["mirror_gain"] > limits["mirror_margin"])
        least = limits["min_reference_template_ncc" if modality == reference else "min_template_ncc"]
        if row["template_ncc"] < least:
            failed.append(f"{modality}: template_ncc {row['template_ncc']:.2f} < {least:.2f}")
        if row["agreement"] < limits["min_agreement"]:
            failed.append(
                f"{modality}: agreement with {reference} {row['agreement']:.2f} "
                f"< {limits['min_agreement']:.2f}"
            )
        if row["mirrored_better"]:
            failed.append(f"{modality}: flipped left-right against {reference}")
        rows.append(row)
    spacing = np.prod(ingested.brain.GetSpacing())
    brain_ml = float(sitk.GetArrayViewFromImage(ingested.brain).astype(bool).sum() * spacing / 1000.0)
    expected_ml = template_brain_ml(template)
    fraction = brain_ml / expected_ml if expected_ml > 0 else float("inf")
    if not limits["min_brain_fraction"] <= fraction <= limits["max_brain_fraction"]:
        failed.append(
            f"brain volume {brain_ml:.0f} mL is {fraction:.2f} of the template's {expected_ml:.0f} mL "
            f"(allowed {limits['min_brain_fraction']:.2f}-{limits['max_brain_fraction']:.2f})"
        )
    return Quality(rows=pd.DataFrame(rows), brain_ml=brain_ml, failed=failed, passed=not failed)


def template_brain_ml(template: Template) -> float:
    """The volume of the template's brain (its brain probability summed): the mean training brain's."""
    voxel_ml = float(np.prod(template.brain.GetSpacing())) / 1000.0
    return float(sitk.GetArrayViewFromImage(template.brain).sum()) * voxel_ml


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation (Pearson) of two voxel lists; 0 when either is constant."""
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def _nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information 2 I(a;b) / (H(a) + H(b)) on a joint histogram between
    the 1st and 99th percentiles: 1 when one predicts the other, 0 when independent."""
    if a.size < 2:
        return 0.0
    ranges = [np.percentile(x, [1, 99]) for x in (a, b)]
    if any(hi <= lo for lo, hi in ranges):
        return 0.0
    joint, _, _ = np.histogram2d(a, b, bins=_BINS, range=ranges)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    ha, hb, hab = entropy(pa), entropy(pb), entropy(joint.ravel())
    return float(2 * (ha + hb - hab) / (ha + hb)) if ha + hb > 0 else 0.0

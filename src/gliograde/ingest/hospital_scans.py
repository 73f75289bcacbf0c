"""Hospital-like scans of a model-space patient: a head around the brain, a random pose, series
of clinical geometry, another scanner's intensity scale and a bias field (for tests and the
accuracy measurement of the ingestion)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")

# Head layers outside the brain: (outer distance from the brain's surface in mm, intensity as a
# fraction of the brain's median per modality flair, t1, t1ce, t2): CSF, skull, scalp with fat.
_LAYERS: tuple[tuple[float, dict[str, float]], ...] = (
    (3.0, {"flair": 0.25, "t1": 0.35, "t1ce": 0.35, "t2": 2.0}),
    (9.0, {"flair": 0.08, "t1": 0.08, "t1ce": 0.08, "t2": 0.08}),
    (15.0, {"flair": 0.9, "t1": 1.3, "t1ce": 1.3, "t2": 0.9}),
)

_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# Rows along anterior-posterior, columns head to foot, slices left to right (LPS columns).
_SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)

# Series geometry: (in-plane spacing, slice spacing, direction, field of view in mm).
_HOSPITAL = {
    "flair": ((0.9375, 0.9375), 5.0, _AXIAL, (240.0, 240.0, 210.0)),
    "t1": ((1.0, 1.0), 1.0, _SAGITTAL, (240.0, 240.0, 210.0)),
    "t1ce": ((1.0, 1.0), 1.0, _AXIAL, (240.0, 240.0, 210.0)),
    "t2": ((0.6, 0.6), 4.0, _AXIAL, (220.0, 220.0, 208.0)),
}
_ISO = {m: ((1.0, 1.0), 1.0, _AXIAL, (240.0, 240.0, 210.0)) for m in MODALITIES}
_FULL_EXTENT = 240.0
"""mm: the model grid's widest side the geometry above is for; smaller grids (tests) get a
head, field of view and pose scaled down with it."""


@dataclass
class HospitalScan:
    """Scanner-space images (int16, with skull) and what was done to make them."""

    images: dict[str, sitk.Image]
    truth: dict = field(default_factory=dict)


def model_grid_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A float32 SimpleITK image of a nibabel-ordered (x, y, z) array with a RAS ``affine``, with
    the geometry SimpleITK gives the same NIfTI file (LPS)."""
    zyx = np.asarray(array, dtype=np.float32).transpose(2, 1, 0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(zyx))
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, dtype=float)[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps[:, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps[:, 3]])
    return image


def scanner_images(
    volumes: Mapping[str, sitk.Image | Path],
    rng: np.random.Generator,
    *,
    resolution: Literal["hospital", "iso"] = "hospital",
) -> HospitalScan:
    """Scanner-space series of one model-space patient (``volumes``: modality -> image or NIfTI).

    The head is posed by a random rotation (up to 12 degrees about each axis) and shift (up to
    15 mm), each series moves a little more (2 degrees, 3 mm), and is sampled on its own grid:
    axial 5 mm FLAIR, sagittal 1 mm T1, axial 1 mm T1ce, axial 0.6 x 0.6 x 4 mm T2 (or axial
    1 mm for all with ``resolution="iso"``), with another scanner's gain and a bias field.
    ``truth["to_model"][m]`` maps series points to model-space points. A model grid smaller
    than BraTS' scales the head's layers, the fields of view and the shifts down with it.
    """
    if resolution not in ("hospital", "iso"):
        raise ValueError(f"resolution must be 'hospital' or 'iso', got {resolution!r}")
    images = {
        m: sitk.Cast(v if isinstance(v, sitk.Image) else sitk.ReadImage(str(v)), sitk.sitkFloat32)
        for m, v in volumes.items()
        if m in MODALITIES
    }
    first = next(iter(images.values()))
    brain = None
    for image in images.values():
        nonzero = image > 0
        brain = nonzero if brain is None else brain | nonzero
    scale = min(1.0, max(np.array(first.GetSize()) * np.array(first.GetSpacing())) / _FULL_EXTENT)
    layers = _layer_images(brain, images, scale)
    centre = np.array(first.TransformContinuousIndexToPhysicalPoint(
        [float(c) for c in _centre_of_mass(brain)]))

    pose = sitk.Euler3DTransform()
    pose.SetCenter(centre.tolist())
    pose.SetRotation(*np.deg2rad(rng.uniform(-12, 12, 3)))
    pose.SetTranslation((rng.uniform(-15, 15, 3) * scale).tolist())
    geometry = _HOSPITAL if resolution == "hospital" else _ISO
    gain = rng.uniform(0.4, 2.5, len(MODALITIES))
    out: dict[str, sitk.Image] = {}
    truth: dict = {"pose": pose, "to_model": {}, "gain": {}, "resolution": resolution, "scale": scale}
    # The series are centred where the posed head is, in scanner coordinates.
    head_centre = np.array(pose.GetInverse().TransformPoint(centre.tolist()))
    for index, modality in enumerate(MODALITIES):
        if modality not in images:
            continue
        motion = sitk.Euler3DTransform()
        motion.SetCenter(head_centre.tolist())
        motion.SetRotation(*np.deg2rad(rng.uniform(-2, 2, 3)))
        motion.SetTranslation((rng.uniform(-3, 3, 3) * scale).tolist())
        to_model = sitk.CompositeTransform([pose, motion])  # motion first, then the pose
        grid = _series_grid(geometry[modality], head_centre + rng.uniform(-8, 8, 3) * scale, scale)
        fine = _sample(images[modality], layers[modality], to_model, grid)
        series = _thick_slices(fine, geometry[modality][1])
        series = _scanner_intensities(series, rng, gain[index])
        out[modality] = series
        truth["to_model"][modality] = to_model
        truth["gain"][modality] = float(gain[index])
    return HospitalScan(images=out, truth=truth)


def _centre_of_mass(mask: sitk.Image) -> np.ndarray:
    """Continuous index (x, y, z) of a binary mask's centre."""
    zyx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    return zyx.mean(axis=0)[::-1]


def _layer_images(brain: sitk.Image, images: Mapping[str, sitk.Image], scale: float) -> dict[str, sitk.Image]:
    """Per modality, the head outside the brain (CSF, skull, scalp) on a grid padded to hold it
    (2 mm at full size); zero inside the brain."""
    pad = int(np.ceil(24 * scale))
    padded = sitk.ConstantPad(sitk.Cast(brain, sitk.sitkUInt8), [pad] * 3, [pad] * 3, 0)
    coarse = sitk.BinShrink(padded, [2 if scale > 0.5 else 1] * 3)
    coarse = coarse > 0
    distance = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(
            coarse, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
    )
    out = {}
    for modality, image in images.items():
        values = sitk.GetArrayViewFromImage(image)
        median = float(np.median(values[values > 0]))
        layer = np.zeros(distance.shape, dtype=np.float32)
        inner = 0.0
        for outer, levels in _LAYERS:
            layer[(distance > inner) & (distance <= outer * scale)] = levels[modality] * median
            inner = outer * scale
        result = sitk.GetImageFromArray(layer)
        result.CopyInformation(coarse)
        out[modality] = result
    return out


def _series_grid(geometry, centre: np.ndarray, scale: float) -> sitk.Image:
    """An empty image with the series' in-plane spacing, 1 mm between slices (thick slices are
    averaged from it), direction and field of view (times ``scale``), centred at ``centre``."""
    (dx, dy), _, direction, fov = geometry
    spacing = np.array([dx, dy, 1.0])
    size = np.round(np.array(fov) * scale / spacing).astype(int)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction)
    d = np.array(direction).reshape(3, 3)
    origin = centre - d @ (spacing * (size - 1) / 2)
    grid.SetOrigin(origin.tolist())
    return grid


def _sample(image: sitk.Image, layer: sitk.Image, to_model: sitk.Transform, grid: sitk.Image) -> sitk.Image:
    """The posed head on the series grid: brain (linear) plus the layers around it."""
    brain = sitk.Resample(image, grid, to_model, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    head = sitk.Resample(layer, grid, to_model, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return brain + head


def _thick_slices(image: sitk.Image, thickness: float) -> sitk.Image:
    """Average 1 mm slices into slices ``thickness`` mm thick (partial volume, as acquired)."""
    factor = int(round(thickness))
    if factor <= 1:
        return image
    return sitk.BinShrink(image, [1, 1, factor])


def _scanner_intensities(image: sitk.Image, rng: np.random.Generator, gain: float) -> sitk.Image:
    """Another scanner's gain, a smooth bias field (about +-15 %) and magnitude noise, as int16."""
    array = sitk.GetArrayFromImage(image)
    bias = np.ones(array.shape, dtype=np.float32)
    for axis, n in enumerate(array.shape):
        t = np.linspace(-1, 1, n, dtype=np.float32)
        profile = np.exp(rng.uniform(-0.12, 0.12) * t + rng.uniform(-0.08, 0.08) * t**2)
        shape = [1, 1, 1]
        shape[axis] = n
        bias *= profile.reshape(shape)
    sigma = 0.015 * float(np.median(array[array > 0]))
    array = np.abs(array * bias + rng.normal(0.0, sigma, array.shape).astype(np.float32)) * gain
    result = sitk.GetImageFromArray(np.clip(np.round(array), 0, 32767).astype(np.int16))
    result.CopyInformation(image)
    return result


def flip_left_right(image: sitk.Image) -> sitk.Image:
    """The same voxels mirrored along the image axis closest to left-right, header unchanged:
    what a series whose header has left and right swapped looks like."""
    direction = np.abs(np.array(image.GetDirection()).reshape(3, 3))
    axis = int(np.argmax(direction[0]))  # the image axis with the largest x (left-right) part
    # Flip alone also flips the direction (same picture); the old header makes it a mirror.
    flipped = sitk.Flip(image, [i == axis for i in range(3)])
    flipped.CopyInformation(image)
    return flipped

"""Registration steps of the ingestion, all SimpleITK: bias correction, rigid inter-modality
registration, rigid registration of the reference to the template, and the left-right mirror
check. Transforms map fixed-image points to moving-image points, as resampling expects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

REGISTRATION_SPACING = 2.0
"""mm: registration images of a head-sized field of view are resampled to this (levels at 4
and 2 mm); see :func:`registration_spacing`."""
_SEED = 20261206  # the metric's random samples: the same input registers the same way


@dataclass
class Fit:
    """A registration's result: the transform and the final metric (lower is better)."""

    transform: sitk.Transform
    metric: float


def registration_spacing(image: sitk.Image) -> float:
    """About 120 samples across the field of view, at most :data:`REGISTRATION_SPACING` and at
    least 1 mm: 2 mm for a head, finer for the small volumes of tests."""
    extent = max(n * s for n, s in zip(image.GetSize(), image.GetSpacing()))
    return float(np.clip(extent / 120.0, 1.0, REGISTRATION_SPACING))


def registration_image(image: sitk.Image, spacing: float = REGISTRATION_SPACING) -> sitk.Image:
    """``image`` (float32) smoothed and resampled to ``spacing`` mm on its own axes, covering its
    field of view; axes already coarser than ``spacing`` are not smoothed."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    old = np.array(image.GetSpacing())
    sigmas = np.sqrt(np.maximum(spacing**2 - old**2, 0.0)) / 2.355
    if np.any(sigmas > 0):
        image = sitk.SmoothingRecursiveGaussian(image, [float(max(s, 1e-3)) for s in sigmas])
    new = np.full(3, spacing)
    size = np.maximum(np.round(np.array(image.GetSize()) * old / new), 1).astype(int)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))
    origin = centre - direction @ (new * (size - 1) / 2)
    return sitk.Resample(
        image, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear, origin.tolist(), new.tolist(),
        image.GetDirection(), 0.0, sitk.sitkFloat32,
    )


def head_mask(image: sitk.Image) -> sitk.Image:
    """The head (everything brighter than the air, Otsu), holes filled, largest piece."""
    mask = sitk.OtsuThreshold(image, 0, 1)
    mask = sitk.BinaryMorphologicalClosing(mask, [2, 2, 2])
    mask = sitk.BinaryFillhole(mask)
    pieces = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.Cast(pieces == 1, sitk.sitkUInt8)


def n4_log_bias(image: sitk.Image, mask: sitk.Image, shrink: int = 4) -> sitk.Image:
    """N4's log bias field of ``image`` on ``image``'s grid, estimated on a ``shrink`` times
    smaller copy (the bias is smooth)."""
    small = sitk.BinShrink(image, [shrink] * 3)
    small_mask = sitk.BinShrink(sitk.Cast(mask, sitk.sitkFloat32), [shrink] * 3) > 0.5
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([25, 25, 15])
    corrector.SetConvergenceThreshold(0.002)
    corrector.Execute(small, small_mask)
    return sitk.Cast(corrector.GetLogBiasFieldAsImage(image), sitk.sitkFloat32)


def centre_of_mass(mask: sitk.Image) -> np.ndarray:
    """Physical centre of a mask (or of a probability image's weights)."""
    weights = sitk.GetArrayViewFromImage(mask).astype(np.float64)
    total = weights.sum()
    zyx = [np.arange(n) for n in weights.shape]
    index = [
        float((weights.sum(axis=tuple(a for a in range(3) if a != axis)) * zyx[axis]).sum() / total)
        for axis in range(3)
    ]
    return np.array(mask.TransformContinuousIndexToPhysicalPoint(index[::-1]))


def _method(fixed_mask: sitk.Image | None, shrink: list[int], smoothing: list[float], iterations: int):
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.10, _SEED)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=4.0, minStep=0.001, numberOfIterations=iterations, relaxationFactor=0.7,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel(smoothing)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    initial: sitk.Transform,
    *,
    fixed_mask: sitk.Image | None = None,
    moving_initial: sitk.Transform | None = None,
    shrink: tuple[int, ...] = (2, 1),
    smoothing: tuple[float, ...] = (2.0, 1.0),
    iterations: int = 80,
) -> Fit:
    """Mattes mutual information registration of ``moving`` to ``fixed`` from ``initial``
    (optimised); ``moving_initial`` is applied after it, unchanged (e.g. a mirror)."""
    method = _method(fixed_mask, list(shrink), list(smoothing), iterations)
    method.SetInitialTransform(initial, inPlace=False)
    if moving_initial is not None:
        method.SetMovingInitialTransform(moving_initial)
    transform = _single(method.Execute(fixed, moving))
    if moving_initial is not None:
        transform = sitk.CompositeTransform([moving_initial, transform])
    return Fit(transform=transform, metric=evaluate(fixed, moving, transform, fixed_mask))


def _single(transform: sitk.Transform) -> sitk.Transform:
    """The one transform inside a composite of one (what registration returns), downcast."""
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        if composite.GetNumberOfTransforms() == 1:
            transform = composite.GetNthTransform(0)
    return transform.Downcast()


def evaluate(
    fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, fixed_mask: sitk.Image | None
) -> float:
    """Mattes mutual information (negative: lower is better) of ``moving`` through ``transform``."""
    method = _method(fixed_mask, [1], [0.0], 1)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInitialTransform(transform, inPlace=False)
    return float(method.MetricEvaluate(fixed, moving))


def rigid_to_reference(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image) -> Fit:
    """Rigid (Euler3D) fit of another series of the same session to the reference: both share
    the scanner's coordinates, so it starts from identity about the reference head's centre."""
    initial = sitk.Euler3DTransform()
    initial.SetCenter(centre_of_mass(fixed_mask).tolist())
    # Three levels, the last unsmoothed: thick-slice series land within about half a millimetre.
    return register(
        fixed, moving, initial, fixed_mask=fixed_mask, shrink=(4, 2, 1), smoothing=(4.0, 2.0, 0.0)
    )


def mirror(centre: np.ndarray, axis: np.ndarray) -> sitk.AffineTransform:
    """Reflection through the plane at ``centre`` whose normal is ``axis``."""
    normal = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    reflection = sitk.AffineTransform(3)
    reflection.SetMatrix((np.eye(3) - 2 * np.outer(normal, normal)).ravel().tolist())
    reflection.SetCenter([float(c) for c in centre])
    return reflection


def mirrored_fit(
    fixed: sitk.Image, moving: sitk.Image, found: Fit, fixed_mask: sitk.Image, moving_mask: sitk.Image
) -> Fit:
    """The best rigid fit of ``moving`` mirrored left-right (through its head's centre), started
    from ``found`` and refined at the coarse level: is it clearly better, the series was flipped."""
    # Left-right in the moving image's physical space is the scanner's x axis.
    reflection = mirror(centre_of_mass(moving_mask), np.array([1.0, 0.0, 0.0]))
    euler = sitk.Euler3DTransform(found.transform)
    # R(T(p)) with R through the head's centre: the same pose mirrored is a fair start.
    return register(
        fixed, moving, euler, fixed_mask=fixed_mask, moving_initial=reflection,
        shrink=(2,), smoothing=(2.0,), iterations=40,
    )


def rigid_to_template(
    template_image: sitk.Image, template_brain: sitk.Image, moving: sitk.Image, moving_head: sitk.Image
) -> Fit:
    """Rigid fit of the patient's reference (with skull) to the template (brain only): the
    template's dilated brain is the fixed mask, the start puts the brain's centre on the head's."""
    brain = sitk.Cast(template_brain > 0.5, sitk.sitkUInt8)
    fixed_mask = sitk.BinaryDilate(brain, [2, 2, 2])
    fixed_centre = centre_of_mass(template_brain)
    shift = centre_of_mass(moving_head) - fixed_centre
    start = sitk.Euler3DTransform()
    start.SetCenter(fixed_centre.tolist())
    start.SetTranslation(shift.tolist())
    return register(template_image, moving, start, fixed_mask=fixed_mask, iterations=150)

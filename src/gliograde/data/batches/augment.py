"""Train-only augmentation of a batch, on whatever device the batch is on (MONAI transforms)."""

from __future__ import annotations

import math

import torch

from gliograde.data.discovery.specs import AugmentSpec


class BatchAugmenter:
    """Random flips, rotation/scale, blur, intensity scale/shift, gamma, noise and bias field.

    Each sample gets its own draw; the random state is reset from (seed, epoch) by
    ``set_epoch`` so a resumed run augments exactly as an uninterrupted one. Background voxels
    (zero in every channel) stay zero: intensity transforms must not paint the air.
    """

    def __init__(self, spec: AugmentSpec, seed: int = 0):
        from monai.data import set_track_meta
        from monai.transforms import (
            Compose,
            RandAdjustContrast,
            RandAffine,
            RandBiasField,
            RandFlip,
            RandGaussianNoise,
            RandGaussianSmooth,
            RandScaleIntensity,
            RandShiftIntensity,
        )

        set_track_meta(False)  # plain tensors in, plain tensors out
        p = spec.prob
        spatial = []
        if spec.flip:
            spatial += [RandFlip(prob=p, spatial_axis=0), RandFlip(prob=p, spatial_axis=1)]
        if spec.rotate_degrees > 0 or spec.scale > 0:
            spatial.append(
                RandAffine(
                    prob=p,
                    rotate_range=math.radians(spec.rotate_degrees),
                    scale_range=spec.scale,
                    padding_mode="zeros",
                )
            )
        intensity = []
        if spec.blur_sigma[1] > 0:  # first: a coarser scan, then the scanner's noise on top
            sigma = tuple(spec.blur_sigma)
            intensity.append(RandGaussianSmooth(sigma_x=sigma, sigma_y=sigma, prob=p))
        if spec.intensity_scale > 0:
            intensity.append(RandScaleIntensity(factors=spec.intensity_scale, prob=p))
        if spec.intensity_shift > 0:
            intensity.append(RandShiftIntensity(offsets=spec.intensity_shift, prob=p))
        if tuple(spec.gamma) != (1.0, 1.0):
            intensity.append(RandAdjustContrast(prob=p, gamma=tuple(spec.gamma)))
        if spec.noise_std > 0:
            intensity.append(RandGaussianNoise(prob=p, std=spec.noise_std))
        if spec.bias_field > 0:
            intensity.append(RandBiasField(prob=p, coeff_range=(0.0, spec.bias_field)))
        self.spatial = Compose(spatial)
        self.intensity = Compose(intensity)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Make the coming draws a function of (seed, epoch) alone."""
        self.spatial.set_random_state(seed=(self.seed * 100_003 + epoch) % 2**32)
        self.intensity.set_random_state(seed=(self.seed * 100_019 + epoch + 1) % 2**32)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(images)
        for i, image in enumerate(images):
            image = self.spatial(image)
            foreground = (image != 0).any(dim=0, keepdim=True)
            out[i] = self.intensity(image) * foreground
        return out

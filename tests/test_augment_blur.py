"""The blur augmentation: a coarser image (less fine texture), off by default, drawn per sample."""

from __future__ import annotations

import torch

from gliograde.data.batches.augment import BatchAugmenter
from gliograde.data.discovery.specs import AugmentSpec

ONLY_BLUR = dict(
    enabled=True, prob=1.0, flip=False, rotate_degrees=0.0, scale=0.0, intensity_scale=0.0,
    intensity_shift=0.0, gamma=(1.0, 1.0), noise_std=0.0, bias_field=0.0,
)


def _noisy_brain() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 4, 48, 48, generator=generator) + 3.0
    images[:, :, :6] = 0  # air above the brain
    return images


def _roughness(images: torch.Tensor) -> float:
    """Mean absolute difference of horizontal neighbours inside the brain: what blurring lowers."""
    inside = images[..., 8:, :]
    return float((inside[..., 1:] - inside[..., :-1]).abs().mean())


def test_blur_smooths_fine_texture_and_keeps_the_air_black():
    images = _noisy_brain()
    blurred = BatchAugmenter(AugmentSpec(**ONLY_BLUR, blur_sigma=(1.0, 1.5)), seed=1)(images)
    assert _roughness(blurred) < 0.5 * _roughness(images)
    assert (blurred[:, :, :6] == 0).all()
    assert torch.isfinite(blurred).all()


def test_blur_is_off_by_default():
    images = _noisy_brain()
    unchanged = BatchAugmenter(AugmentSpec(**ONLY_BLUR), seed=1)(images)
    assert torch.equal(unchanged, images)
    assert AugmentSpec().blur_sigma == (0.0, 0.0)


def test_each_sample_draws_its_own_sigma():
    images = _noisy_brain()[:1].repeat(4, 1, 1, 1)
    blurred = BatchAugmenter(AugmentSpec(**ONLY_BLUR, blur_sigma=(0.3, 2.0)), seed=2)(images)
    roughness = [_roughness(b) for b in blurred]
    assert max(roughness) - min(roughness) > 0.05, roughness

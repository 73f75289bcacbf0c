"""Grad-CAM heat maps with captum, on the backbone's last convolutional stage."""

from __future__ import annotations

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn


def grad_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor, target: int) -> torch.Tensor:
    """Heat maps ``[B, H, W]`` in [0, 1] for class ``target`` from ``layer``'s activations,
    upsampled to the input size."""
    cam = LayerGradCam(model, layer)
    with torch.enable_grad():
        attributions = cam.attribute(images.requires_grad_(True), target=target, relu_attributions=True)
    maps = LayerAttribution.interpolate(attributions, images.shape[-2:], interpolate_mode="bilinear")[:, 0]
    maps = maps.detach()
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (maps / peak).clamp(0, 1)

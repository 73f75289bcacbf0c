"""The segmenter's network: MONAI's 2D BasicUNet, inputs padded to a multiple of 16."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_FEATURES = (8, 16, 32, 64, 128, 8)
DIVISOR = 16  # four 2x poolings


class PaddedUNet(torch.nn.Module):
    """``BasicUNet(spatial_dims=2, out_channels=1)``: one tumour logit per pixel, for any
    ``[H, W]`` (zero-padded up to a multiple of 16, the output cropped back)."""

    def __init__(self, in_channels: int, features: Sequence[int] = DEFAULT_FEATURES, dropout: float = 0.0):
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.unet = BasicUNet(
            spatial_dims=2, in_channels=in_channels, out_channels=1, features=tuple(features), dropout=dropout
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        pad_y, pad_x = -height % DIVISOR, -width % DIVISOR
        if pad_y or pad_x:
            images = F.pad(images, (0, pad_x, 0, pad_y))
        return self.unet(images)[..., :height, :width]

"""Torchvision backbones adapted to C-channel MRI slices and a K-class head.

Every model is built with ``weights=None``; ImageNet weights come only from a local file passed
as ``pretrained``, so nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn
from gliograde.errors import ConfigError
from gliograde.models.names import BACKBONES


# Dotted paths of the stem convolution and of the final linear layer, per model family.
_FIRST_CONV = {
    "resnet": "conv1",
    "densenet": "features.conv0",
    "efficientnet": "features.0.0",
    "convnext": "features.0.0",
}
# The last convolutional stage, whose activations Grad-CAM weighs.
_LAST_STAGE = {
    "resnet": "layer4",
    "densenet": "features",
    "efficientnet": "features",
    "convnext": "features",
}
_HEAD = {
    "resnet": "fc",
    "densenet": "classifier",
    "efficientnet": "classifier.1",
    "convnext": "classifier.2",
}


def create_backbone(
    name: str,
    in_channels: int,
    num_classes: int,
    pretrained: str | os.PathLike[str] | None = None,
    stem_stride: int | None = None,
) -> nn.Module:
    """Build torchvision model ``name`` for ``in_channels`` inputs and ``num_classes`` logits.

    ``pretrained`` is a local ImageNet state dict of the unmodified model; it is loaded strictly,
    then the stem weights are adapted with :func:`adapt_input_conv` and the head is new.
    ``stem_stride`` (ResNets only) changes the stem stride; ``1`` gives the unpadded, biased
    ``Conv2d(in_channels, 64, 7, stride=1)`` stem of the reference article.
    """
    family = _family(name)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if stem_stride is not None:
        if family != "resnet":
            raise ConfigError(f"stem_stride is only supported for ResNets, not {name!r}")
        if isinstance(stem_stride, bool) or not isinstance(stem_stride, int) or stem_stride < 1:
            raise ConfigError(f"stem_stride must be a positive integer or None, got {stem_stride!r}")

    model = getattr(torchvision.models, name)(weights=None)
    if pretrained is not None:
        _load_pretrained(model, name, Path(pretrained))

    parent, attr = first_conv(model, name)
    old: nn.Conv2d = getattr(parent, attr)
    new = _new_stem(old, in_channels, stem_stride)
    with torch.no_grad():
        if pretrained is not None:
            new.weight.copy_(adapt_input_conv(old.weight, in_channels))
            if new.bias is not None:
                if old.bias is not None:
                    new.bias.copy_(old.bias)
                else:
                    new.bias.zero_()
        else:
            _init_like_family(new, family)
    setattr(parent, attr, new)

    parent, attr = classifier_layer(model, name)
    old_head: nn.Linear = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old_head.in_features, num_classes))
    return model


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Map conv weights ``[O, I, kH, kW]`` (I=3 for RGB) onto ``in_channels`` inputs.

    ``in_channels=1`` sums the I filters. Otherwise the I filters are repeated cyclically
    (C=4 from RGB gives R, G, B, R) and scaled by I/C, so the summed filter keeps its scale.
    Returns a new tensor; ``weight`` is not modified.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D conv weight [O, I, kH, kW], got shape {tuple(weight.shape)}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
    weight = weight.detach()
    source = weight.shape[1]
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels, device=weight.device) % source
    return weight[:, index] * (source / in_channels)


def first_conv(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Return ``(parent module, attribute name)`` of the stem convolution of ``model``."""
    return _locate(model, _FIRST_CONV[_family(name)], nn.Conv2d)


def classifier_layer(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Return ``(parent module, attribute name)`` of the final linear layer of ``model``."""
    return _locate(model, _HEAD[_family(name)], nn.Linear)


def cam_layer(model: nn.Module, name: str) -> nn.Module:
    """The last convolutional stage of backbone ``name`` (the layer Grad-CAM explains)."""
    return model.get_submodule(_LAST_STAGE[_family(name)])


def _family(name: str) -> str:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return next(family for family in _FIRST_CONV if name.startswith(family))


def _locate(model: nn.Module, path: str, kind: type[nn.Module]) -> tuple[nn.Module, str]:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    layer = getattr(parent, attr)
    if not isinstance(layer, kind):
        raise TypeError(f"expected {kind.__name__} at {path!r}, found {type(layer).__name__}")
    return parent, attr


def _new_stem(old: nn.Conv2d, in_channels: int, stem_stride: int | None) -> nn.Conv2d:
    if stem_stride == 1:
        # The reference article's stem: stride 1, no padding, default (biased) Conv2d.
        return nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=1)
    return nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride if stem_stride is None else stem_stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )


def _init_like_family(conv: nn.Conv2d, family: str) -> None:
    # Match the initialisation torchvision gives the rest of the network, not Conv2d's default.
    if family == "convnext":
        nn.init.trunc_normal_(conv.weight, std=0.02)
    elif family == "densenet":
        nn.init.kaiming_normal_(conv.weight)
    else:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _load_pretrained(model: nn.Module, name: str, path: Path) -> None:
    """Load a local state dict of the unmodified torchvision model, strictly."""
    if not path.is_file():
        raise ConfigError(f"pretrained weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling raises many unrelated types
        raise ConfigError(f"cannot read pretrained weights file {str(path)!r}: {error}") from error
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise ConfigError(f"pretrained weights file {str(path)!r} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ConfigError(f"pretrained weights file {str(path)!r} does not match {name}: {error}") from error


__all__ = ["BACKBONES", "adapt_input_conv", "cam_layer", "classifier_layer", "create_backbone", "first_conv"]

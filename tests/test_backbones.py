"""Backbone factory: stem/head replacement, article stem, input-conv adaptation, local weights."""

from __future__ import annotations

from functools import cache

import pytest
import torch
import torchvision
from torch import nn

from gliograde.models.backbones import (
    BACKBONES,
    adapt_input_conv,
    classifier_layer,
    create_backbone,
    first_conv,
)

NUM_CLASSES = 2


@cache
def _built(name: str, in_channels: int) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone(name, in_channels, NUM_CLASSES).eval()


@cache
def _reference(name: str) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None)


def _layer(model: nn.Module, locate) -> nn.Module:
    parent, attr = locate(model)
    return getattr(parent, attr)


@pytest.mark.parametrize("in_channels", [1, 4])
@pytest.mark.parametrize("name", BACKBONES)
def test_forward_stem_and_head(name: str, in_channels: int) -> None:
    model = _built(name, in_channels)
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 64, 64))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()

    stem = _layer(model, lambda m: first_conv(m, name))
    original = _layer(_reference(name), lambda m: first_conv(m, name))
    assert isinstance(stem, nn.Conv2d)
    assert stem.in_channels == in_channels
    assert stem.weight.shape[1] == in_channels
    for attribute in ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(stem, attribute) == getattr(original, attribute), attribute
    assert (stem.bias is None) == (original.bias is None)

    head = _layer(model, lambda m: classifier_layer(m, name))
    original_head = _layer(_reference(name), lambda m: classifier_layer(m, name))
    assert isinstance(head, nn.Linear)
    assert head.out_features == NUM_CLASSES
    assert head.in_features == original_head.in_features


def test_unknown_name_lists_backbones() -> None:
    with pytest.raises(ValueError, match="resnet18.*convnext_tiny"):
        create_backbone("vgg16", 4, 2)


@pytest.mark.parametrize("kwargs", [{"in_channels": 0}, {"num_classes": 0}, {"stem_stride": 0}])
def test_bad_sizes_rejected(kwargs: dict) -> None:
    arguments = {"name": "resnet18", "in_channels": 4, "num_classes": 2} | kwargs
    with pytest.raises(ValueError):
        create_backbone(**arguments)


def test_article_stem_stride_one() -> None:
    model = create_backbone("resnet18", 4, 2, stem_stride=1).eval()
    assert repr(model.conv1) == "Conv2d(4, 64, kernel_size=(7, 7), stride=(1, 1))"
    assert model.conv1.padding == (0, 0)
    assert model.conv1.bias is not None

    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        article = model.conv1(x)
        default = _built("resnet18", 4).conv1(x)
        assert model(x).shape == (2, 2)
    assert article.shape[-2:] == (58, 58)
    assert default.shape[-2:] == (32, 32)


def test_other_stem_stride_keeps_padding_and_bias() -> None:
    model = create_backbone("resnet34", 1, 3, stem_stride=3)
    assert model.conv1.stride == (3, 3)
    assert model.conv1.padding == (3, 3)
    assert model.conv1.bias is None
    assert create_backbone("resnet18", 1, 3, stem_stride=None).conv1.stride == (2, 2)


@pytest.mark.parametrize("name", ["densenet121", "efficientnet_b0", "convnext_tiny"])
def test_stem_stride_rejected_for_non_resnets(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        create_backbone(name, 4, 2, stem_stride=1)


def test_adapt_input_conv_hand_computed() -> None:
    weight = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).reshape(2, 3, 1, 1)
    four = adapt_input_conv(weight, 4)
    expected_four = torch.tensor([[1.0, 2.0, 3.0, 1.0], [4.0, 5.0, 6.0, 4.0]]) * 0.75
    assert torch.equal(four, expected_four.reshape(2, 4, 1, 1))
    one = adapt_input_conv(weight, 1)
    assert torch.equal(one, torch.tensor([6.0, 15.0]).reshape(2, 1, 1, 1))
    two = adapt_input_conv(weight, 2)
    assert torch.equal(two, (torch.tensor([[1.0, 2.0], [4.0, 5.0]]) * 1.5).reshape(2, 2, 1, 1))
    assert torch.equal(adapt_input_conv(weight, 3), weight)
    assert torch.equal(weight, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).reshape(2, 3, 1, 1))


def test_adapt_input_conv_preserves_summed_filter() -> None:
    torch.manual_seed(1)
    weight = torch.randn(8, 3, 7, 7)
    # Exact whenever every RGB filter appears equally often (C = 1 or a multiple of 3).
    for in_channels in (1, 3, 6, 9):
        adapted = adapt_input_conv(weight, in_channels)
        assert adapted.shape == (8, in_channels, 7, 7)
        torch.testing.assert_close(adapted.sum(dim=1), weight.sum(dim=1))
    # For any C when the RGB filters agree, e.g. a constant image gives the same response.
    grey = torch.randn(8, 1, 7, 7).expand(8, 3, 7, 7)
    for in_channels in (1, 2, 4, 5):
        torch.testing.assert_close(adapt_input_conv(grey, in_channels).sum(dim=1), grey.sum(dim=1))


def test_adapt_input_conv_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        adapt_input_conv(torch.zeros(2, 3, 3), 4)
    with pytest.raises(ValueError):
        adapt_input_conv(torch.zeros(2, 3, 3, 3), 0)


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.mark.parametrize("wrapped", [False, True])
def test_pretrained_local_state_dict(resnet18_state, tmp_path, wrapped: bool) -> None:
    path = tmp_path / "resnet18.pth"
    if wrapped:
        torch.save({"state_dict": {f"module.{k}": v for k, v in resnet18_state.items()}}, path)
    else:
        torch.save(resnet18_state, path)

    torch.manual_seed(999)
    model = create_backbone("resnet18", 4, 2, pretrained=str(path))
    body = model.state_dict()
    for key in ("layer1.0.conv1.weight", "layer4.1.bn2.running_var", "bn1.weight"):
        assert torch.equal(body[key], resnet18_state[key]), key
    assert torch.equal(model.conv1.weight, adapt_input_conv(resnet18_state["conv1.weight"], 4))
    assert model.fc.weight.shape == (2, 512)
    assert model.fc.bias.shape == (2,)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 4, 40, 40)).shape == (1, 2)


def test_pretrained_with_article_stem(resnet18_state, tmp_path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save({"model": resnet18_state}, path)
    model = create_backbone("resnet18", 1, 2, pretrained=path, stem_stride=1)
    assert repr(model.conv1) == "Conv2d(1, 64, kernel_size=(7, 7), stride=(1, 1))"
    assert torch.equal(model.conv1.weight, adapt_input_conv(resnet18_state["conv1.weight"], 1))
    assert torch.equal(model.conv1.bias, torch.zeros(64))


def test_pretrained_mismatch_names_file(tmp_path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="resnet34.pth"):
        create_backbone("resnet18", 4, 2, pretrained=path)


def test_pretrained_missing_or_unreadable_file_names_file(tmp_path) -> None:
    missing = tmp_path / "absent.pth"
    with pytest.raises(ValueError, match="absent.pth"):
        create_backbone("resnet18", 4, 2, pretrained=missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        create_backbone("resnet18", 4, 2, pretrained=garbage)
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(ValueError, match="tensor.pth"):
        create_backbone("resnet18", 4, 2, pretrained=not_a_dict)

"""The model choices by name, importable without torch (config checks run before heavy imports)."""

from __future__ import annotations

BACKBONES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "convnext_tiny",
)
"""torchvision models the backbone factory adapts to C-channel slices."""

OPTIMIZER_CLASSES: dict[str, str] = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}
"""``model.optimizer.name`` -> the ``torch.optim`` class it builds."""

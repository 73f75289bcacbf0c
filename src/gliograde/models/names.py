"""The model choices by name, importable without torch (config checks run before heavy imports)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

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

# The classifier's defaults, written once: GradeClassifier fills what a caller leaves out from
# these, and every conf/model/*.yaml spells the same values out for users (a test holds them equal).
DEFAULT_OPTIMIZER: Mapping[str, Any] = MappingProxyType({"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4})
"""``model.optimizer`` when not given."""

DEFAULT_SCHEDULER: Mapping[str, Any] = MappingProxyType(
    {"name": "cosine", "warmup_epochs": 1, "min_lr_ratio": 0.0}
)
"""``model.scheduler`` when not given: linear warm-up over one epoch, then cosine decay to zero."""

DEFAULT_LOSS: Mapping[str, Any] = MappingProxyType({"class_weighted": False, "label_smoothing": 0.0})
"""``model.loss`` when not given: plain cross-entropy."""

"""A trained network written as ONNX (the classifier's slices to class probabilities, the
segmenter's slices to tumour probabilities, dynamic batch) and checked against the network on random
inputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from gliograde.data.batches.crops import input_channels
from gliograde.inference.models import TorchModel


OPSET = 17
TOLERANCE = 1e-4


def _segmenter_net(segmenter):
    import torch

    class Probability(torch.nn.Module):
        """The segmenter's network followed by the sigmoid: the graph gives tumour probability."""

        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.net(image).sigmoid()

    return Probability(segmenter.network).cpu().eval()


def _segmenter_example(segmenter, batch: int, seed: int = 0) -> np.ndarray:
    """z-scored-like slices of the segmenter's grid plane (or 40x40: not a multiple of 16, so
    the graph's padding is checked too)."""
    grid = segmenter.contract.get("grid")
    height, width = (int(grid["shape"][1]), int(grid["shape"][0])) if grid else (40, 40)
    rng = np.random.default_rng(seed)
    contract = segmenter.contract
    channels = input_channels(len(contract["modalities"]), int(contract.get("context", 0)))
    images = rng.standard_normal((batch, channels, height, width)).astype(np.float16)
    images[..., : height // 8, :] = 0
    return images.astype(np.float32)


def _write_segmenter_onnx(segmenter, path: Path) -> None:
    import torch

    net = _segmenter_net(segmenter)
    example = torch.from_numpy(_segmenter_example(segmenter, 2))
    dynamic = {0: "batch", 2: "height", 3: "width"}
    # The tracer's notices (shape tests made constant, instance norm exported with its input's
    # statistics, as it computes in eval mode too) tell the user nothing: the graph is checked
    # against the checkpoint on several batch sizes and windows (_check_segmenter_onnx).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*(instance_norm|Constant folding)")
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["probability"],
            dynamic_axes={"image": dynamic, "probability": dynamic},
            opset_version=OPSET,
            dynamo=False,
        )


def _check_segmenter_onnx(segmenter, path: Path) -> float:
    """Largest tumour-probability difference between onnxruntime and PyTorch on batches of 1, 5
    and 2: the grid plane, a window that is a multiple of 16 and one that the graph pads."""
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    net = _segmenter_net(segmenter)
    worst = 0.0
    for batch, seed, window in ((1, 1, None), (5, 2, (32, 32)), (2, 3, (37, 29))):
        images = _segmenter_example(segmenter, batch, seed)
        if window:
            images = np.ascontiguousarray(images[..., : window[0], : window[1]])
        with torch.no_grad():
            expected = net(torch.from_numpy(images)).numpy()
        got = session.run(None, {"image": images})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > TOLERANCE:
        raise RuntimeError(
            f"the segmenter's ONNX graph differs from its checkpoint by {worst:.2e} (> {TOLERANCE})"
        )
    return worst


def _probability_net(model: TorchModel):
    import torch

    class Probabilities(torch.nn.Module):
        """The backbone followed by softmax: the exported graph gives probabilities, and the logits
        that a stored temperature scales."""

        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.net(image)
            return logits.softmax(dim=1), logits

    return Probabilities(model.model).cpu().eval()


def _example(model: TorchModel, batch: int, seed: int = 0) -> np.ndarray:
    height, width = model.contract.get("image_size") or (64, 64)
    rng = np.random.default_rng(seed)
    channels = input_channels(len(model.contract["modalities"]), int(model.contract.get("context", 0)))
    # z-scored brain voxels: about N(0, 1), background 0, stored as float16 like the cache
    images = rng.standard_normal((batch, channels, height, width)).astype(np.float16)
    images[..., : height // 8, :] = 0
    return images.astype(np.float32)


def _write_onnx(model: TorchModel, path: Path) -> None:
    import torch

    net = _probability_net(model)
    spatial = {} if model.contract.get("image_size") else {2: "height", 3: "width"}
    example = torch.from_numpy(_example(model, 2))
    # The torch.export-based exporter needs onnxscript, which is not a dependency here; the
    # TorchScript exporter's graph is checked against the checkpoint under onnxruntime
    # (_check_onnx) before anything is kept, so its deprecation notice tells the user nothing.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["probabilities", "logits"],
            dynamic_axes={
                "image": {0: "batch", **spatial},
                "probabilities": {0: "batch"},
                "logits": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )


def _check_onnx(model: TorchModel, path: Path) -> float:
    """Largest probability difference between onnxruntime and PyTorch on batches of 1 and 5."""
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    net = _probability_net(model)
    worst = 0.0
    for batch, seed in ((1, 1), (5, 2)):
        images = _example(model, batch, seed)
        with torch.no_grad():
            expected = net(torch.from_numpy(images))[0].numpy()
        got = session.run(None, {"image": images})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > TOLERANCE:
        raise RuntimeError(f"the ONNX graph differs from the checkpoint by {worst:.2e} (> {TOLERANCE})")
    return worst

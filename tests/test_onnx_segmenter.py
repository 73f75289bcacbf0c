"""The ONNX segmenter and the PyTorch one share one slicing of a volume: same modalities, context,
window and threshold, so the same masks; the export's graph check refuses a graph that differs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from gliograde.inference import onnx_export
from gliograde.segmentation.inference import Segmenter
from gliograde.segmentation.volume import segment_volume
from gliograde.segmentation.network import PaddedUNet
from gliograde.segmentation.onnx_segmenter import OnnxSegmenter

TINY_FEATURES = (4, 4, 8, 8, 16, 4)
STORED = ["t1", "t1ce", "t2", "flair"]


def _segmenter(context: int) -> Segmenter:
    torch.manual_seed(0)
    modalities = ["flair", "t2"]
    network = PaddedUNet(len(modalities) * (2 * context + 1), TINY_FEATURES).eval()
    # a bias on the output so that the tiny random network calls some voxels tumour, not half
    with torch.no_grad():
        network.unet.final_conv.bias.fill_(-0.3)
    contract = {"kind": "segmenter", "modalities": modalities, "context": context, "grid": None}
    return Segmenter(Path("seg.ckpt"), contract, 0.8, network=network)


def _volume() -> np.ndarray:
    rng = np.random.default_rng(3)
    volume = np.zeros((7, 4, 40, 36), np.float16)
    volume[1:6, :, 5:33, 4:30] = rng.standard_normal((5, 4, 28, 26))  # slices 0 and 6: no brain
    return volume


@pytest.mark.slow  # a few seconds: kept out of the fast suite's 90 s
def test_the_onnx_segmenter_gives_the_pytorch_segmenters_mask(tmp_path):
    segmenter = _segmenter(context=1)
    graph = tmp_path / "segmenter.onnx"
    onnx_export._write_segmenter_onnx(segmenter, graph)
    assert onnx_export._check_segmenter_onnx(segmenter, graph) < 1e-4
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    onnx = OnnxSegmenter(graph, segmenter.contract, 0.8, session=session)
    volume = _volume()
    expected = segmenter.segment(volume, STORED)
    found = onnx.segment(volume, STORED)
    assert found.dtype == bool and found.shape == (7, 40, 36)
    assert 0 < expected.sum() < expected[1:6].size  # a mask with both answers
    assert np.count_nonzero(found != expected) <= 3
    assert not found[0].any() and not found[6].any()  # brain-free slices skipped
    assert (onnx.kind, segmenter.kind) == ("onnx", "checkpoint")
    # The export's graph check refuses a graph that is not this network's.
    with torch.no_grad():
        for parameter in segmenter.network.parameters():
            parameter.add_(0.5)
    with pytest.raises(RuntimeError, match="differs from its checkpoint"):
        onnx_export._check_segmenter_onnx(segmenter, graph)


def test_segment_volume_feeds_the_contracts_modalities_and_context_in_windows():
    seen: list[np.ndarray] = []

    def predict_batch(images: np.ndarray) -> np.ndarray:
        seen.append(images)
        return np.where(images[:, 1] > 0, 0.9, 0.1).astype(np.float32)

    volume = _volume()
    contract = {"modalities": ["flair"], "context": 1}
    mask = segment_volume(volume, STORED, contract, predict_batch, 0.5, "seg")
    assert all(batch.dtype == np.float32 and batch.shape[1] == 3 for batch in seen)
    assert sum(len(batch) for batch in seen) == 5  # the five brain slices
    # the middle channel of each context stack is the slice itself: flair > 0 there is the mask
    assert np.array_equal(mask, volume[:, 3].astype(np.float32) > 0)

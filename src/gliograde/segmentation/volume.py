"""A segmenter's network run over a whole volume, slab by slab inside the brain's box, and the one
error a segmenter raises."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from gliograde.data.batches.crops import context_slices, stack_context
from gliograde.errors import GliogradeError
from gliograde.segmentation.network import DIVISOR


BATCH_SLICES = 16  # axial slices per forward pass
WINDOW_MARGIN = 16  # voxels of background kept around the brain's box: the UNet's context at its edge


class SegmenterError(GliogradeError):
    """The segmenter cannot be opened or used as asked."""


def segment_volume(
    volume: np.ndarray,
    stored: Sequence[str],
    contract: Mapping[str, Any],
    predict_batch: Callable[[np.ndarray], np.ndarray],
    threshold: float,
    source: Any,
) -> np.ndarray:
    """The bool whole-tumour mask ``[z, y, x]`` of ``volume`` (``[z, C, y, x]``, channels =
    ``stored``) by a segmenter of ``contract`` whose ``predict_batch`` maps float32 slices
    ``[B, C, H, W]`` to tumour probabilities ``[B, H, W]``: its modalities picked, its context
    stacked, the brain's window cut, ``BATCH_SLICES`` brain slices at a time; brain-free slices
    stay False. ``source`` names the segmenter in refusals."""
    volume = np.asarray(volume)
    if volume.ndim != 4 or volume.shape[1] != len(stored):
        raise SegmenterError(
            f"a volume to segment is [z, C, y, x] with one channel per stored modality {list(stored)}; "
            f"got shape {list(volume.shape)}"
        )
    modalities = list(contract["modalities"])
    missing = [m for m in modalities if m not in stored]
    if missing:
        raise SegmenterError(
            f"{source}: the segmenter needs modalities {modalities}; {missing} not among {list(stored)}"
        )
    inputs = volume[:, [list(stored).index(m) for m in modalities]]  # [z, M, y, x]
    depth = inputs.shape[0]
    # Brain, as everywhere: voxels nonzero in any of the model's own modalities.
    brain = np.flatnonzero(inputs.reshape(depth, -1).any(axis=1))
    context = int(contract.get("context", 0))
    mask = np.zeros((depth, *inputs.shape[2:]), dtype=bool)
    if len(brain) == 0:
        return mask
    rows_y, cols_x = _brain_window(inputs[brain].any(axis=(0, 1)))
    inputs = inputs[:, :, rows_y, cols_x]
    for start in range(0, len(brain), BATCH_SLICES):
        picked = brain[start : start + BATCH_SLICES]
        rows = context_slices(picked, context, depth).ravel() if context else picked
        images = np.ascontiguousarray(stack_context(inputs[rows], context), dtype=np.float32)
        mask[picked, rows_y, cols_x] = predict_batch(images) > threshold
    return mask


def _brain_window(brain: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the [y, x] plane the network sees: the brain's box widened by
    ``WINDOW_MARGIN`` and grown to a multiple of 16 (no padding inside the UNet), clipped to the
    grid. Beyond it is background, so the network's time goes to the brain (about half of a
    240x240 BraTS slice)."""
    window = []
    for axis, size in enumerate(brain.shape):
        inside = np.flatnonzero(brain.any(axis=1 - axis))
        low = max(int(inside[0]) - WINDOW_MARGIN, 0)
        high = min(int(inside[-1]) + 1 + WINDOW_MARGIN, size)
        length = min(-(-(high - low) // DIVISOR) * DIVISOR, size)
        low = max(min(low, size - length), 0)
        window.append(slice(low, low + length))
    return window[0], window[1]

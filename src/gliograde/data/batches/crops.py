"""Tumour-region and brain crops, and neighbouring slices as channels: the index arithmetic
shared by the cached dataset and predict's streamed path, so both feed a model alike.

Coordinates are (row, column) of a slice image as ``SliceDataset`` reads it: axial ``[y, x]``,
coronal ``[z, x]``, sagittal ``[z, y]``. A box is ``(row0, row1, col0, col1)`` inclusive,
``-1`` everywhere when empty.

- ``data.crop.mode=tumor``: a ``size`` x ``size`` square centred on the centre of the tumour's
  bounding box in that slice. A slice without tumour uses the centre of the patient's tumour
  box in that plane (all slices together); a patient without a mask uses the brain crop's centre.
- ``data.crop.mode=brain``: a ``size`` x ``size`` square centred on the centre of the patient's
  brain bounding box in that plane (all slices together), the same for every slice of a patient.
  Nothing is resized: a brain wider than ``size`` is cut at its edges (BraTS brains fit 192).
- The square keeps its centre where it leaves the image; the part outside is zeros.
- ``data.context=k``: each modality contributes slices ``z-k .. z+k`` along the plane's normal,
  clamped to the volume's first and last slice, modality-major:
  ``flair[z-1], flair[z], flair[z+1], t1ce[z-1], ...`` (``C * (2k + 1)`` channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TUMOUR_RULE = "tumor"
NO_MASK_RULE = "tumor (no mask: brain centre)"

# Axes of a (z, y, x) mask that become one slice's (rows, cols), and the slice axis, per plane.
_PLANE_AXES = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}


def slice_boxes(mask: np.ndarray, plane: str) -> np.ndarray:
    """Bounding box ``[n_slices, 4]`` (int32, -1 when empty) of ``mask`` (bool ``(z, y, x)``)
    in every slice of ``plane``."""
    normal, row_axis, col_axis = _PLANE_AXES[plane]
    rows = mask.any(axis=col_axis)  # (normal, row) or (row, normal) with the other axes left
    cols = mask.any(axis=row_axis)
    # Put the slice axis first: of the two axes left, the slice axis is whichever is ``normal``.
    rows = rows if normal < row_axis else rows.T
    cols = cols if normal < col_axis else cols.T
    boxes = np.full((mask.shape[normal], 4), -1, dtype=np.int32)
    present = rows.any(axis=1)
    boxes[present, 0] = rows[present].argmax(axis=1)
    boxes[present, 1] = rows.shape[1] - 1 - rows[present, ::-1].argmax(axis=1)
    boxes[present, 2] = cols[present].argmax(axis=1)
    boxes[present, 3] = cols.shape[1] - 1 - cols[present, ::-1].argmax(axis=1)
    return boxes


def union_box(boxes: np.ndarray) -> np.ndarray:
    """The box ``[4]`` holding every non-empty box of ``boxes`` ``[n, 4]`` (-1s when none)."""
    present = boxes[:, 0] >= 0
    if not present.any():
        return np.full(4, -1, dtype=np.int32)
    inside = boxes[present]
    return np.array(
        [inside[:, 0].min(), inside[:, 1].max(), inside[:, 2].min(), inside[:, 3].max()], dtype=np.int32
    )


def modality_union(boxes: np.ndarray, channels: Sequence[int]) -> np.ndarray:
    """Per-slice union ``[..., slice, 4]`` of per-modality boxes ``[..., slice, modality, 4]``
    over the modalities ``channels`` (-1s where none of them has a voxel in the slice)."""
    chosen = np.asarray(boxes)[..., list(channels), :].astype(np.int64)
    empty = chosen[..., :1] < 0
    low = np.where(empty, np.iinfo(np.int64).max, chosen).min(axis=-2)
    high = np.where(empty, -1, chosen).max(axis=-2)
    union = np.stack([low[..., 0], high[..., 1], low[..., 2], high[..., 3]], axis=-1)
    union[empty.all(axis=-2)[..., 0]] = -1
    return union.astype(np.int32)


def box_centre(boxes: np.ndarray) -> np.ndarray:
    """Integer centres ``[..., 2]`` (row, col) of boxes ``[..., 4]`` (rounded down)."""
    boxes = np.asarray(boxes, dtype=np.int64)
    return np.stack([(boxes[..., 0] + boxes[..., 1]) // 2, (boxes[..., 2] + boxes[..., 3]) // 2], axis=-1)


def crop_centres(
    mode: str,
    slices: np.ndarray,
    tumour_boxes: np.ndarray | None,
    modality_boxes: np.ndarray,
    channels: Sequence[int],
) -> tuple[np.ndarray, str]:
    """Crop centres ``[N, 2]`` of one patient's ``slices`` and the rule that placed them; the
    one choice of boxes for the cached and the streamed path alike.

    ``tumour_boxes`` is the patient's per-slice tumour boxes ``[n_slices, 4]`` in the plane,
    None (or all empty) for a patient without a mask. ``modality_boxes`` is its per-slice brain
    boxes of each modality it has ``[n_slices, modality, 4]``; the brain is that of the run's
    modalities (``channels``, indices into its modality axis) alone, as processing them alone
    would find it, whatever other modalities were processed with them.
    """
    slices = np.asarray(slices, dtype=np.int64)
    brain_boxes = modality_union(modality_boxes, channels)
    brain = np.broadcast_to(box_centre(union_box(brain_boxes)), (len(slices), 2))
    if mode == "brain":
        return brain.copy(), "brain"
    if mode != "tumor":
        raise ValueError(f"no crop centres for mode {mode!r}")
    if tumour_boxes is None or not (tumour_boxes[:, 0] >= 0).any():
        return brain.copy(), NO_MASK_RULE
    own = tumour_boxes[slices]
    fallback = box_centre(union_box(tumour_boxes))
    centres = np.where((own[:, :1] >= 0), box_centre(own), fallback[None, :])
    return centres, TUMOUR_RULE


def crop(images: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` squares of ``images`` ``[N, C, H, W]`` centred on ``centres`` ``[N, 2]``
    (at index ``size // 2``), zeros where a square leaves its image; one gather for the batch."""
    n, _, height, width = images.shape
    offsets = np.arange(size) - size // 2
    rows = np.asarray(centres[:, 0], dtype=np.int64)[:, None] + offsets  # [N, size]
    cols = np.asarray(centres[:, 1], dtype=np.int64)[:, None] + offsets
    row_ok = (rows >= 0) & (rows < height)
    col_ok = (cols >= 0) & (cols < width)
    # Gather from clipped indices, then zero what fell outside: no padded copy of the batch.
    out = images[
        np.arange(n)[:, None, None, None],
        np.arange(images.shape[1])[None, :, None, None],
        np.clip(rows, 0, height - 1)[:, None, :, None],
        np.clip(cols, 0, width - 1)[:, None, None, :],
    ]
    out *= (row_ok[:, :, None] & col_ok[:, None, :])[:, None].astype(out.dtype)
    return out


def context_slices(slices: np.ndarray, k: int, depth: int) -> np.ndarray:
    """Slice numbers ``[N, 2k + 1]``: ``z - k .. z + k`` for each ``z``, clamped to ``0 .. depth-1``."""
    offsets = np.arange(-k, k + 1)
    return np.clip(np.asarray(slices, dtype=np.int64)[:, None] + offsets, 0, depth - 1)


def stack_context(images: np.ndarray, k: int) -> np.ndarray:
    """``[N * (2k + 1), C, H, W]`` (slice-major, as ``context_slices`` flattened) to
    ``[N, C * (2k + 1), H, W]`` modality-major; a view-free reshape when ``k == 0``."""
    if k == 0:
        return images
    width = 2 * k + 1
    n = len(images) // width
    grouped = images.reshape(n, width, *images.shape[1:]).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(grouped).reshape(n, -1, *images.shape[2:])


def input_channels(n_modalities: int, k: int) -> int:
    """Channels a model sees: each modality once per slice of the context."""
    return n_modalities * (2 * k + 1)


def centre_channels(n_modalities: int, k: int) -> list[int]:
    """The channels of the centre slice, one per modality, in modality order."""
    return [m * (2 * k + 1) + k for m in range(n_modalities)]


def normal_length(volume_shape: tuple[int, int, int], plane: str) -> int:
    """Slices along ``plane``'s normal of a ``(x, y, z)`` volume."""
    x, y, z = volume_shape
    return {"axial": z, "coronal": y, "sagittal": x}[plane]

"""Map-style dataset of 2D slices read from the cache, one batch per call.

The DataLoader calls ``__getitems__`` with a whole batch of indices. The cache stores only
a slab of each patient's axial slices, cut to a block around the brain (see ``cache_box``):
each axial slice is one contiguous stored block, copied into its place in a zeroed full
``[H, W]`` slice. A slice outside the slab reads as zeros where the slab holds every brain
slice, and is refused otherwise. From a full-grid cache an axial batch is one gather.
Neighbouring slices (``context``) are read in the same call, their slice numbers expanded by
index arithmetic, and a crop is one more gather over the batch (see ``gliograde.data.batches.crops``).
A float32 batch is converted by torch into a NumPy-allocated buffer: NumPy asks for huge
pages for large arrays, which spares the page faults of a fresh 59 MB tensor per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gliograde.data.caching.cache_box import BoxLayout
from gliograde.data.batches.crops import context_slices, crop, stack_context
from gliograde.data.discovery.specs import MODALITIES

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16}


class SliceDataset(Dataset):
    """Samples are (patient, slice) pairs of one plane; channels are ``modalities`` in order,
    read from the cache whose channels are ``stored`` (its modalities, in MODALITIES order),
    each as ``2 * context + 1`` neighbouring slices (modality-major) when ``context`` > 0, which
    needs ``depth`` (slices along the plane's normal). With ``crop_size``, each image is the
    ``crop_size`` square centred on its row of ``centres`` ``[N, 2]``.

    A batch is a dict: ``image`` ``[B, C, H, W]`` (``dtype``), ``label`` ``[B]`` int64 (-1 when
    unlabelled), ``patient`` ``[B]`` int64 (position in ``patient_ids``), ``slice_index``
    ``[B]`` int64, and ``patient_id`` (list of str).
    """

    def __init__(
        self,
        volumes_path: Path,
        layout: BoxLayout,
        slots: np.ndarray,
        patient_positions: np.ndarray,
        slice_indices: np.ndarray,
        labels: np.ndarray,
        patient_ids: tuple[str, ...],
        modalities: tuple[str, ...],
        plane: str = "axial",
        dtype: torch.dtype = torch.float32,
        stored: Sequence[str] = MODALITIES,
        context: int = 0,
        depth: int | None = None,
        crop_size: int | None = None,
        centres: np.ndarray | None = None,
    ):
        self.volumes_path = Path(volumes_path)
        self.layout = layout
        self._first_row = layout.first_row
        self.slots = np.asarray(slots, dtype=np.int64)
        self.patient_positions = np.asarray(patient_positions, dtype=np.int64)
        self.slice_indices = np.asarray(slice_indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.patient_ids = patient_ids
        missing = [m for m in modalities if m not in stored]
        if missing:
            raise ValueError(f"modalities {missing} are not among the cache's channels {list(stored)}")
        # The model's channel order, as positions among the cache's stored channels.
        self.channels = np.array([list(stored).index(m) for m in modalities], dtype=np.int64)
        self.plane = plane
        self.dtype = dtype
        if context and depth is None:
            raise ValueError("context > 0 needs the volume's depth along the plane's normal")
        if (crop_size is None) != (centres is None):
            raise ValueError("a crop needs both crop_size and one centre per row")
        self.context = context
        self.depth = depth
        self.crop_size = crop_size
        self.centres = None if centres is None else np.asarray(centres, dtype=np.int64)
        self._volumes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.slice_indices)

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes open their own memory map.
        state = self.__dict__.copy()
        state["_volumes"] = None
        return state

    @property
    def volumes(self) -> np.ndarray:
        if self._volumes is None:
            # A plain ndarray view of the memory map: gathers then return plain arrays.
            self._volumes = np.asarray(np.load(self.volumes_path, mmap_mode="r"))
        return self._volumes

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.batch([index])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        """The DataLoader's batched read: see ``batch``."""
        return self.batch(indices)

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """The collated batch of rows ``indices``: image ``[B, C, H, W]``, label, patient
        (position), slice_index and patient_id."""
        idx = np.asarray(indices, dtype=np.int64)
        images = self.images(idx)
        image = torch.from_numpy(images)
        if image.dtype != self.dtype:
            image = cast(image, self.dtype)
        positions = self.patient_positions[idx]
        return {
            "image": image,
            "label": torch.from_numpy(self.labels[idx]),
            "patient": torch.from_numpy(positions),
            "slice_index": torch.from_numpy(self.slice_indices[idx]),
            "patient_id": [self.patient_ids[p] for p in positions],
        }

    def images(self, idx: np.ndarray) -> np.ndarray:
        """The model's input ``[B, C', H', W']`` of rows ``idx``: one read of the cache, then
        the context's channels stacked and the crop gathered."""
        slots, slices = self.slots[idx], self.slice_indices[idx]
        if self.context:
            assert self.depth is not None
            width = 2 * self.context + 1
            slots = np.repeat(slots, width)
            slices = context_slices(slices, self.context, self.depth).ravel()
        images = stack_context(self._read(slots, slices), self.context)
        if self.crop_size is not None:
            assert self.centres is not None
            images = crop(images, self.centres[idx], self.crop_size)
        return images

    def _read(self, slots: np.ndarray, slices: np.ndarray) -> np.ndarray:
        """Full-grid slices ``[B, C, H, W]`` in the cache's dtype, zeros outside the box.

        From a full-grid cache, one gather. Otherwise each stored block is copied straight
        into its place in a zeroed batch: a gather into a temporary first would move the
        bytes twice. Raises ValueError for a slice the cache's slab does not hold.
        """
        vol, layout = self.volumes, self.layout  # vol: [row, channel, block_y, block_x]
        channels, first = self.channels, self._first_row[slots]
        if self.plane == "axial" and layout.is_full:
            return vol[(first + slices)[:, None], channels[None, :]]
        depth, height, width = layout.grid
        (by, bx), origin, rows = layout.block, layout.origin[slots], layout.depth[slots]
        size = {"axial": (height, width), "coronal": (depth, width), "sagittal": (depth, height)}[self.plane]
        out = np.empty((len(slots), len(channels), *size), dtype=vol.dtype)
        if self.plane == "axial":
            return self._read_axial(out, first, slices, origin, rows)
        if layout.slab != "brain":
            raise ValueError(f"{self.plane} slices cross every axial slice, not only a {layout.slab} slab's")
        out.fill(0)
        for b, i in enumerate(slices):
            (z0, y0, x0), stored = origin[b], vol[first[b] : first[b] + rows[b]]
            if self.plane == "coronal" and y0 <= i < y0 + by:  # fixed y -> [channel, z, x]
                part = stored[:, :, i - y0, :][:, channels]
                out[b, :, z0 : z0 + rows[b], x0 : x0 + bx] = part.transpose(1, 0, 2)
            elif self.plane == "sagittal" and x0 <= i < x0 + bx:  # fixed x -> [channel, z, y]
                part = stored[:, :, :, i - x0][:, channels]
                out[b, :, z0 : z0 + rows[b], y0 : y0 + by] = part.transpose(1, 0, 2)
        return out

    def _read_axial(
        self, out: np.ndarray, first: np.ndarray, slices: np.ndarray, origin: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        """Fill ``out`` ``[B, C, H, W]`` with axial slices: each slice zeroed, then its stored
        block copied into its place, one channel at a time where the channels are not the
        cache's order (``block[channels]`` would copy each block into a temporary first)."""
        vol, (by, bx) = self.volumes, self.layout.block
        channels = [int(c) for c in self.channels]
        every_channel = channels == list(range(vol.shape[1]))
        local = slices - origin[:, 0]
        stored = (local >= 0) & (local < rows)
        if self.layout.slab != "brain" and not stored.all():
            b = int(np.flatnonzero(~stored)[0])
            raise ValueError(
                f"axial slice {slices[b]} is outside the {self.layout.slab} slab the cache holds for "
                f"this patient (slices {origin[b, 0]} to {origin[b, 0] + rows[b] - 1})"
            )
        for b in range(len(out)):
            # Zeroed one slice at a time, just before its block lands in it (still in the CPU
            # cache): a fill of the whole batch first was measured a quarter slower.
            out[b].fill(0)
            if not stored[b]:
                continue
            y0, x0 = int(origin[b, 1]), int(origin[b, 2])
            block, image = vol[first[b] + local[b]], out[b, :, y0 : y0 + by, x0 : x0 + bx]
            if every_channel:
                image[...] = block
            else:
                for j, c in enumerate(channels):
                    image[j] = block[c]
        return out


def identity_collate(batch: dict[str, Any]) -> dict[str, Any]:
    """``__getitems__`` already returns a collated batch."""
    return batch


def cast(image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``image.to(dtype)``; on the CPU into a NumPy-allocated buffer, which NumPy backs with
    huge pages: a fresh 59 MB torch tensor per batch costs more in page faults than the cast."""
    if image.device.type != "cpu" or dtype not in _NUMPY_DTYPES:
        return image.to(dtype)
    out = torch.from_numpy(np.empty(tuple(image.shape), dtype=_NUMPY_DTYPES[dtype]))
    return out.copy_(image)

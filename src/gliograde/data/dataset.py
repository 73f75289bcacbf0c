"""Map-style dataset of 2D slices read from the cache, one batch per call.

The DataLoader calls ``__getitems__`` with a whole batch of indices; for axial slices the
batch is gathered from the memory-mapped cache with one fancy-indexing call over (patient
slice, channel) rows of contiguous ``[H, W]`` blocks, so a float16 batch (the default, the
cache's own dtype) costs about one memcpy of its bytes. Neighbouring slices (``context``) are
read in the same call, their slice numbers expanded by index arithmetic, and a crop is one more
gather over the batch (see ``gliograde.data.crops``).
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

from gliograde.data.crops import context_slices, crop, stack_context
from gliograde.data.specs import MODALITIES

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
        vol = self.volumes  # [slot, z, channel, y, x]
        if self.plane == "axial":
            rows = vol.reshape(-1, *vol.shape[2:])  # [slot * z, channel, y, x], a view
            return rows[(slots * vol.shape[1] + slices)[:, None], self.channels[None, :]]
        if self.plane == "coronal":  # fixed y -> [channel, z, x]
            parts = [vol[s, :, :, i, :][:, self.channels].transpose(1, 0, 2) for s, i in zip(slots, slices)]
        else:  # sagittal: fixed x -> [channel, z, y]
            parts = [vol[s, :, :, :, i][:, self.channels].transpose(1, 0, 2) for s, i in zip(slots, slices)]
        return np.ascontiguousarray(np.stack(parts)) if parts else np.empty((0,), dtype=vol.dtype)


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

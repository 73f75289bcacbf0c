"""Map-style dataset of 2D slices read from the cache, one batch per call.

The DataLoader calls ``__getitems__`` with a whole batch of indices; for axial slices the
batch is gathered from the memory-mapped cache with one fancy-indexing call over (patient
slice, channel) rows of contiguous ``[H, W]`` blocks, so a float16 batch (the default, the
cache's own dtype) costs about one memcpy of its bytes.
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

from gliograde.data.specs import MODALITIES

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16}


class SliceDataset(Dataset):
    """Samples are (patient, slice) pairs of one plane; channels are ``modalities`` in order,
    read from the cache whose channels are ``stored`` (its modalities, in MODALITIES order).

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
        images = self._read(self.slots[idx], self.slice_indices[idx])
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

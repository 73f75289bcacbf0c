"""``data.device_cache``: a split's slices copied once to the accelerator, batches indexed there.

The rows are read through ``SliceDataset.batch`` (so whatever a batch holds, the copy holds),
in chunks, into tensors preallocated on the device. ``DeviceBatches`` then serves an epoch as
the DataLoader would: the same sampler (Lightning calls its ``set_epoch`` through the
iterable's ``sampler`` attribute, as for a DataLoader) cut by the same ``BatchSampler``, so the
same indices in the same order, without workers or host-to-device copies. Lightning takes any iterable with a
length from ``*_dataloader``; it injects distributed samplers into DataLoaders only, so
sharding for DDP is done here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler

from gliograde.data.batches.dataset import SliceDataset
from gliograde.errors import ConfigError

# Rows are read and copied this many bytes at a time: big enough to amortise each read,
# small enough that the host copy of a chunk stays a small fraction of memory.
CHUNK_BYTES = 64 * 2**20
_INDEX_KEYS = ("label", "patient", "slice_index")
GIB = 2**30


def free_bytes(device: torch.device) -> int | None:
    """Memory free for a new tensor on ``device``: CUDA's free memory, the host's available
    memory for the CPU, None where it cannot be known."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as info:
                for line in info:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return None


def estimate_bytes(dataset: SliceDataset, rows: int) -> tuple[int, tuple[int, ...], torch.dtype]:
    """(bytes, shape of one image, dtype) of ``rows`` rows of ``dataset`` held as tensors."""
    sample = dataset.batch([0])["image"]
    per_row = sample[0].numel() * sample.element_size() + 8 * len(_INDEX_KEYS)
    return rows * per_row, tuple(sample.shape[1:]), sample.dtype


class DeviceSlices:
    """Rows ``rows`` of a ``SliceDataset`` held on ``device``: image, label, patient and
    slice_index tensors, and the patient ids (host strings) of every row."""

    def __init__(self, dataset: SliceDataset, rows: np.ndarray, device: torch.device, split: str):
        rows = np.asarray(rows, dtype=np.int64)
        needed, shape, dtype = estimate_bytes(dataset, len(rows))
        free = free_bytes(device)
        if free is not None and needed > free:
            raise ConfigError(
                f"data.device_cache=true: the {split} split's {len(rows)} slices need about "
                f"{needed / GIB:.2f} GiB on {device}, but only {free / GIB:.2f} GiB is free; "
                "set data.device_cache=false (or select fewer slices)"
            )
        self.device = device
        self.image = torch.empty((len(rows), *shape), dtype=dtype, device=device)
        self.index = {k: torch.empty(len(rows), dtype=torch.int64, device=device) for k in _INDEX_KEYS}
        chunk = max(1, CHUNK_BYTES // max(1, self.image[:1].numel() * self.image.element_size()))
        for start in range(0, len(rows), chunk):
            batch = dataset.batch(rows[start : start + chunk])
            stop = start + len(batch["label"])
            self.image[start:stop].copy_(batch["image"])
            for key in _INDEX_KEYS:
                self.index[key][start:stop].copy_(batch[key])
        self.patient_ids = np.asarray(dataset.patient_ids, dtype=object)
        self.positions = dataset.patient_positions[rows]
        self.labels = dataset.labels[rows]

    def __len__(self) -> int:
        return len(self.image)

    def batch(self, positions: Sequence[int], index: torch.Tensor | None = None) -> dict[str, Any]:
        """The batch of held rows ``positions`` (positions in this copy, not in the dataset);
        ``index``, the same positions already on the device, spares a copy."""
        host = np.asarray(positions, dtype=np.int64)
        if index is None:
            index = torch.from_numpy(host).to(self.device)
        batch: dict[str, Any] = {"image": self.image.index_select(0, index)}
        for key, values in self.index.items():
            batch[key] = values.index_select(0, index)
        batch["patient_id"] = self.patient_ids[self.positions[host]].tolist()
        return batch


class DeviceBatches:
    """One split's batches from a ``DeviceSlices``, cut from ``sampler``'s order by the
    ``BatchSampler`` a DataLoader would use. ``sampler`` and ``batch_sampler`` are where
    Lightning looks, as on a DataLoader, to call ``set_epoch`` and to see whether it shuffles."""

    def __init__(self, slices: DeviceSlices, sampler: Sampler[int], batch_size: int, drop_last: bool):
        self.slices = slices
        self.sampler = sampler
        self.batch_sampler = BatchSampler(sampler, batch_size, drop_last)

    @property
    def drop_last(self) -> bool:
        return self.batch_sampler.drop_last

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # The epoch's order goes to the device in one copy: a blocking copy per batch would
        # wait for the GPU each time and stop the host from running ahead of it.
        batches = list(self.batch_sampler)
        flat = [i for positions in batches for i in positions]
        order = torch.tensor(flat, dtype=torch.int64).to(self.slices.device)
        start = 0
        for positions in batches:
            yield self.slices.batch(positions, order[start : start + len(positions)])
            start += len(positions)

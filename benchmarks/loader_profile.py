"""The loader's side of ``make bench``: a MONAI peer, the full-grid twin of the lean cache, and
where a batch's time goes.

- ``monai_peer_loader``: the usual MONAI pipeline over the same slices, a
  ``monai.data.CacheDataset`` of in-RAM float32 volumes, one axial slice per item, batched by
  ``monai.data.DataLoader`` (its default collation stacks the items).
- ``full_grid_loader``: the train loader's dataset read from a cache of the same cohort that
  stores every patient's full grid (the first version's layout): the same batches, bit for bit.
- ``profile_batches``: the cost of each stage of a batch, in milliseconds (medians over
  batches): index arithmetic, zeroing, block copy, the whole read, collation (the batch
  dict), the float32 cast, pinning (with a GPU only), and
  the hand-over a worker process adds (the batch pickled into fresh shared memory and
  unpickled, in one process: the receiver's page faults are not counted).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

STAGES = (
    "index",
    "zeroing",
    "block_copy",
    "read",
    "collation",
    "cast_float32",
    "pinning",
    "worker_handover",
)


def monai_peer_loader(dm, batch_size: int):
    """A MONAI CacheDataset loader over ``dm``'s train slices: each patient's volume in RAM as
    float32 ``[z, C, y, x]`` (its run's channels), one ``[C, y, x]`` slice per item, shuffled
    batches of ``batch_size``."""
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Compose, EnsureTyped

    dataset, cached = dm.datasets["train"], dm.cached
    channels = cached.channels_of(dm.modalities)
    volumes = {
        int(p): np.ascontiguousarray(cached.volume(int(p))[:, channels], dtype=np.float32)
        for p in np.unique(dataset.patient_positions)
    }
    items = [
        {"image": volumes[int(p)][int(z)], "label": int(label)}
        for p, z, label in zip(dataset.patient_positions, dataset.slice_indices, dataset.labels)
    ]
    transform = Compose([EnsureTyped(keys=["image", "label"], track_meta=False)])
    peer = CacheDataset(items, transform=transform, progress=False, num_workers=0)
    return DataLoader(peer, batch_size=batch_size, shuffle=True, drop_last=len(peer) > batch_size)


def full_grid_dataset(dataset, full_cached):
    """``dataset`` (a SliceDataset) reading the same rows from ``full_cached``, a cache of the
    same patients that stores the full grid."""
    from gliograde.data.batches.dataset import SliceDataset

    assert full_cached.layout.is_full
    twin: SliceDataset = copy.copy(dataset)
    twin.volumes_path = full_cached.volumes_path
    twin.layout = full_cached.layout
    twin._first_row = full_cached.layout.first_row
    twin.slots = full_cached.slots[dataset.patient_positions]
    twin._volumes = None
    return twin


def loader_over(dataset, batch_size: int, seed: int = 0, worker_processes: int = 0):
    """The train loader the DataModule makes over ``dataset``; with ``worker_processes``, the
    batches are built in that many worker processes instead, as the DataModule once did."""
    from torch.utils.data import DataLoader

    from gliograde.data.batches.dataset import identity_collate
    from gliograde.data.batches.samplers import EpochShuffleSampler

    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(dataset), seed=seed),
        drop_last=len(dataset) > batch_size,
        collate_fn=identity_collate,
        num_workers=worker_processes,
        persistent_workers=worker_processes > 0,
    )


def _median_ms(fn: Callable[[np.ndarray], Any], batches: list[np.ndarray]) -> float:
    times = []
    for rows in batches:
        start = time.perf_counter()
        out = fn(rows)
        times.append(time.perf_counter() - start)
        del out
    return 1e3 * float(np.median(times))


def profile_batches(dataset, batch_size: int, batches: int = 20, seed: int = 0) -> dict[str, float | None]:
    """Milliseconds per batch of each of ``STAGES`` for ``dataset`` (a SliceDataset of axial
    slices without crop or context), medians over ``batches`` random batches. ``zeroing`` and
    ``block_copy`` split ``read`` for a lean cache (None for the full grid, whose
    read is one gather); ``pinning`` is None without a GPU."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers the shared-memory tensor reductions)

    from gliograde.data.batches.dataset import cast

    rng = np.random.default_rng(seed)
    picks = [rng.permutation(len(dataset))[:batch_size] for _ in range(batches)]
    vol, layout = dataset.volumes, dataset.layout
    channels = [int(c) for c in dataset.channels]
    full = layout.is_full
    _, height, width = layout.grid
    shape = (batch_size, len(channels), height, width)

    def index(rows):
        slots, slices = dataset.slots[rows], dataset.slice_indices[rows]
        origin = layout.origin[slots]
        local = slices - origin[:, 0]
        return dataset._first_row[slots] + local, (local >= 0) & (local < layout.depth[slots]), origin

    def zeroing(rows):
        out = np.empty(shape, dtype=vol.dtype)
        for b in range(len(out)):
            out[b].fill(0)
        return out

    zeros = np.zeros(shape, dtype=vol.dtype)

    def block_copy(rows):
        source, stored, origin = index(rows)
        (by, bx) = layout.block
        for b in range(len(rows)):
            if stored[b]:
                y0, x0 = int(origin[b, 1]), int(origin[b, 2])
                block, image = vol[source[b]], zeros[b, :, y0 : y0 + by, x0 : x0 + bx]
                for j, c in enumerate(channels):
                    image[j] = block[c]
        return None

    def read(rows):
        return dataset._read(dataset.slots[rows], dataset.slice_indices[rows])

    sample = dataset.batch(picks[0])["image"]

    def collation(rows):
        return dataset.batch(rows)

    def handover(rows):
        batch = {"image": sample.clone()}  # a fresh batch, as a worker makes one
        return ForkingPickler.loads(ForkingPickler.dumps(batch))

    figures: dict[str, float | None] = {
        "index": _median_ms(index, picks),
        "zeroing": None if full else _median_ms(zeroing, picks),
        "block_copy": None if full else _median_ms(block_copy, picks),
        "read": _median_ms(read, picks),
    }
    figures["collation"] = max(_median_ms(collation, picks) - figures["read"], 0.0)
    figures["cast_float32"] = _median_ms(lambda rows: cast(sample, torch.float32), picks)
    figures["pinning"] = _median_ms(lambda rows: sample.pin_memory(), picks) if torch.cuda.is_available() else None
    figures["worker_handover"] = _median_ms(handover, picks) - _median_ms(lambda rows: sample.clone(), picks)
    return figures

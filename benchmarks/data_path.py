"""The data path's costs: preprocessing, the cache's size and checks, NIfTI reads, and the loader
against memcpy, the article's loader and a MONAI peer."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import MIN_SECONDS, Options, _median_time, _records


# ------------------------------------------------------------------------ measurements
def measure_preprocess(root: Path, work: Path, workers: int | None, repeats: int) -> tuple[float, Path]:
    """Seconds per patient of a full cache build (header checks, decode, z-score, write).

    Returns the median and the directory of the last build, kept for the loader runs.
    """
    from gliograde.data.caching.cache import open_or_build
    from gliograde.data.discovery.specs import LayoutSpec, PreprocessSpec

    records = _records(root)
    spec = PreprocessSpec(workers=workers)
    per_patient = []
    cache_dir = work
    for rep in range(repeats):
        cache_dir = work / f"cache-{workers or 'all'}-{rep}"
        start = time.perf_counter()
        open_or_build(records, cache_dir, spec, LayoutSpec().mask_labels, progress=False)
        per_patient.append((time.perf_counter() - start) / len(records))
        if rep < repeats - 1:
            shutil.rmtree(cache_dir)
    return float(np.median(per_patient)), cache_dir


def measure_cache_bytes(cached) -> tuple[float, float]:
    """(bytes per patient of a built cache, its ratio to the same cache holding the full grid)."""
    from gliograde.data.caching.key import CACHE_DTYPE

    patients = len(cached.patient_ids)
    total = cached.size_bytes()
    stored = cached.volumes_path.stat().st_size
    channels = len(cached.modalities)
    full_grid = patients * int(np.prod(cached.shape)) * channels * np.dtype(CACHE_DTYPE).itemsize
    return total / patients, total / (total - stored + full_grid)


def measure_cache_checks(directory: Path, repeats: int) -> tuple[float, float]:
    """(seconds per patient of a full check of a built cache, seconds of an open's sampled check)."""
    from gliograde.data.caching.cache_meta import read_meta, verify_cache

    patients = len(read_meta(directory)["files"]["volumes.npy"]["crc32_blocks"]) - 1
    full = _median_time(lambda: verify_cache(directory, "full"), repeats)
    return full / patients, _median_time(lambda: verify_cache(directory, "sample"), repeats)


def measure_nibabel_read(root: Path, repeats: int) -> float:
    """Seconds per patient for nibabel to read the five files into in-memory arrays."""
    import nibabel as nib

    from gliograde.data.discovery.specs import MODALITIES

    records = _records(root)
    paths = [[r.modalities[m] for m in MODALITIES] + [r.mask] for r in records]

    def read_all() -> None:
        for files in paths:
            for path in files:
                np.asarray(nib.load(str(path), mmap=False).dataobj.get_unscaled())

    return _median_time(read_all, repeats) / len(records)


def measure_loader(dm, repeats: int, min_seconds: float = MIN_SECONDS) -> float:
    """Slices per second from the train loader of ``dm`` (or from ``dm`` itself, any loader of
    dict batches), after one warm-up epoch (steady state): the median over every batch of its
    slices over the time it took to arrive, as ``measure_memcpy`` takes the median copy, so a
    batch during which another process held the core moves the figure as little as a slow copy.

    ``repeats`` measurements each run whole epochs for at least ``min_seconds``.
    """
    loader = dm.train_dataloader() if hasattr(dm, "train_dataloader") else dm
    for _ in loader:  # maps the cache pages, starts persistent workers
        pass
    rates = []
    for _ in range(repeats):
        start = last = time.perf_counter()
        while last - start < min_seconds or not rates:
            batches = iter(loader)
            last = time.perf_counter()  # an epoch's start-up is not a batch's time
            for batch in batches:
                now = time.perf_counter()
                rates.append(len(batch["image"]) / (now - last))
                last = now
    return float(np.median(rates))


def measure_memcpy(shape: tuple[int, ...], dtype: np.dtype, min_seconds: float = MIN_SECONDS) -> float:
    """Slices per second of copying a batch's bytes into a preallocated buffer (median copy)."""
    source = np.random.default_rng(0).standard_normal(shape, dtype=np.float32).astype(dtype)
    target = np.empty_like(source)
    times: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - start)
    return shape[0] / float(np.median(times))


class ArticleSliceDataset:
    """The article's loader: every item loads the four NIfTI files and keeps one slice."""

    def __init__(self, items: list[tuple[list[Path], int, int]]):
        self.items = items  # (modality paths, axial slice, label)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        import nibabel as nib
        import torch

        paths, z, label = self.items[index]
        image = np.stack([nib.load(str(p)).get_fdata()[:, :, z] for p in paths]).astype(np.float32)
        return torch.from_numpy(image), label


def measure_article_loader(root: Path, n: int, batch_size: int, depth: int, seed: int) -> float:
    """Slices per second of the article's loader over ``n`` random axial slices."""
    from torch.utils.data import DataLoader

    from gliograde.data.discovery.specs import MODALITIES

    records = _records(root)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        record = records[i % len(records)]
        items.append(([record.modalities[m] for m in MODALITIES], int(rng.integers(depth)), record.label))
    loader = DataLoader(ArticleSliceDataset(items), batch_size=min(batch_size, n), shuffle=False)
    start = time.perf_counter()
    slices = sum(len(images) for images, _ in loader)
    return slices / (time.perf_counter() - start)


def measure_loader_variants(
    default, root: Path, work: Path, opts: Options, results: dict[str, float], extra: dict[str, Any]
) -> None:
    """The loader beside its peers, in this run: two worker processes, a full-grid cache of the
    same cohort, the MONAI peer, and the per-batch profile of both layouts."""
    from benchmarks import loader_profile
    from gliograde.data.caching.cache import open_or_build
    from gliograde.data.discovery.specs import LayoutSpec, PreprocessSpec

    lean = default.datasets["train"]
    extra["loader_worker_processes2"] = measure_loader(
        loader_profile.loader_over(lean, opts.batch_size, opts.seed, worker_processes=2), opts.repeats
    )
    full_cached = open_or_build(
        _records(root), work / "cache-full", PreprocessSpec(), LayoutSpec().mask_labels, progress=False, box_margin=None
    )
    full = loader_profile.full_grid_dataset(lean, full_cached)
    extra["loader_full_grid"] = measure_loader(loader_profile.loader_over(full, opts.batch_size, opts.seed), opts.repeats)
    extra["profile_lean"] = loader_profile.profile_batches(lean, opts.batch_size, seed=opts.seed)
    extra["profile_full"] = loader_profile.profile_batches(full, opts.batch_size, seed=opts.seed)
    del full
    shutil.rmtree(work / "cache-full", ignore_errors=True)
    peer = loader_profile.monai_peer_loader(default, opts.batch_size)
    results["monai_peer_slices_per_s"] = measure_loader(peer, opts.repeats)

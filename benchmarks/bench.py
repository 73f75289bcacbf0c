"""``python -m benchmarks.bench [--out FILE] [--patients N] [--shape X Y Z] ...``

Measures the data path and the training loop side by side, in one run, on a synthetic cohort
it generates (full size by default: 240x240x155, uncompressed ``.nii`` as BraTS 2020 ships),
and writes the figures to FILE (JSON):

- ``preprocess_s_per_patient``: NIfTI decode + z-score + cache write (a real cache build),
  one worker; ``preprocess_s_per_patient_all_workers``: the same with every core.
- ``nibabel_read_s_per_patient``: nibabel reading the patient's five files into arrays.
- ``cache_bytes_per_patient``: bytes of the built cache (every file; the brain strategy's
  slab, the largest) per patient; ``cache_bytes_ratio``: that over the same cache storing the
  full grid of every patient.
- ``cache_full_check_s_per_patient``: checking every block of that cache's ``volumes.npy``
  against its crc32 (what ``prepare`` does, and an open after the file changed), per patient;
  ``cache_open_check_s``: the checks every other open makes (sizes, the index's sha256, the
  array header and a sample of patients' blocks).
- ``loader_slices_per_s``: slices per second from the DataModule's train loader (batches of
  ``--batch-size``, ``num_workers=0``); ``loader_slices_per_s_workers2``: with
  ``num_workers=2`` (batches are built in the main process all the same). The table adds the
  loader with two worker processes (as the DataModule once ran them), over a full-grid cache
  of the same cohort, and a per-batch profile of both layouts (see ``loader_profile``).
- ``monai_peer_slices_per_s``: a MONAI ``CacheDataset`` over the same slices from in-RAM
  float32 volumes, one slice per item, batches of ``--batch-size``.
- ``article_loader_slices_per_s``: a Dataset whose ``__getitem__`` loads the four NIfTI files
  with ``get_fdata()`` and takes one slice.
- ``memcpy_slices_per_s``: copying one batch's bytes, in the dtype the loader delivers, into
  a preallocated buffer (the ceiling).
- ``lightning_vs_plain_ratio``: samples/s of ``Trainer.fit`` on the GradeClassifier over a
  plain PyTorch loop with the same model, optimizer, batches and data.
- ``rss_mb_small``, ``rss_mb_large``: peak RSS of a short training run (separate processes) on
  a cohort of ``max(2, N // 4)`` patients and on the N-patient one.
- ``predict_one_patient_s``: wall time of ``python predict.py ckpt=CKPT input=PATIENT`` on one
  patient of the cohort (ResNet18, the default slice rule, Grad-CAM and report included),
  start-up and imports included; the median of ``--repeats`` runs.
- ``segment_one_patient_s``: the segmenter (``model=unet``) finding the tumour of one cached
  patient; ``predict_with_segmenter_s``: ``predict.py ... segmenter=SEG`` on one patient folder
  without a mask, start-up included (see ``benchmarks.segmenter_bench``).
- ``ingest_one_patient_s``: ``python -m gliograde.ingest`` on one hospital-like DICOM patient
  (skull, head pose, hospital grids), start-up included (see ``benchmarks.ingest_bench``).

Timings are medians of ``--repeats`` runs (or of per-step or per-batch intervals), so a busy
machine moves them less. The NIfTI files are read from the page cache (they were just written): the figures
are CPU costs, not disk speed. A readable table with ratios and the targets follows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KEYS: tuple[str, ...] = (
    "preprocess_s_per_patient",
    "preprocess_s_per_patient_all_workers",
    "nibabel_read_s_per_patient",
    "cache_bytes_per_patient",
    "cache_bytes_ratio",
    "cache_full_check_s_per_patient",
    "cache_open_check_s",
    "loader_slices_per_s",
    "loader_slices_per_s_workers2",
    "article_loader_slices_per_s",
    "memcpy_slices_per_s",
    "monai_peer_slices_per_s",
    "lightning_vs_plain_ratio",
    "rss_mb_small",
    "rss_mb_large",
    "predict_one_patient_s",
    "segment_one_patient_s",
    "predict_with_segmenter_s",
    "ingest_one_patient_s",
)
FULL_SHAPE = (240, 240, 155)
REPO = Path(__file__).resolve().parents[1]

# Targets on a 2-core CPU machine (at full size).
PREPROCESS_MAX_S = 0.4
LOADER_MIN_OF_MEMCPY = 0.5
LOADER_MIN_OVER_ARTICLE = 1000.0
LOADER_MIN_OVER_PEER = 10.0
LIGHTNING_MIN_RATIO = 0.95
RSS_MAX_GROWTH_MB = 200.0
PREDICT_MAX_S = 15.0
# SEGMENT_MAX_S and PREDICT_WITH_SEGMENTER_MAX_S: see benchmarks.segmenter_bench

# Each loader and memcpy measurement runs at least this long (short runs are noisy).
MIN_SECONDS = 0.5

# Every run uses all patients for training: the loader and the steps see the whole cohort,
# and small cohorts need one patient of each class only.
TRAIN_ONLY = {"train": 1.0, "val": 0.0, "test": 0.0}


@dataclass
class Options:
    out: Path
    patients: int = 12
    shape: tuple[int, int, int] = FULL_SHAPE
    batch_size: int = 64
    train_batch_size: int = 16
    warmup_steps: int = 2
    train_steps: int = 10
    rss_steps: int = 3
    repeats: int = 3
    article_slices: int = 32
    workdir: Path | None = None
    keep: bool = False
    seed: int = 0


# ---------------------------------------------------------------------------- helpers
def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def quiet_logs() -> None:
    """Lightning's banners and the DataLoader's advice are noise in a benchmark."""
    import pytorch_lightning  # noqa: F401  (it sets its loggers' levels on import)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*__array__ implementation.*")


def bench_datamodule(root: Path, cache_dir: Path, **overrides):
    """A datamodule on ``root`` as the benchmarks use it (all patients in train, every brain
    slice, no progress bars, one preprocessing worker), with ``overrides`` on top."""
    from gliograde.data.datamodule import GliomaDataModule

    options: dict[str, Any] = {
        "root": root,
        "cache_dir": cache_dir,
        "split": TRAIN_ONLY,
        "slices": {"strategy": "brain"},
        "progress": False,
        "preprocess": {"workers": 1},
    }
    options.update(overrides)
    dm = GliomaDataModule(**options)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _records(root: Path):
    from gliograde.data.discovery.cohort import discover_cohort
    from gliograde.data.discovery.specs import LabelSpec, LayoutSpec

    return discover_cohort(root, LayoutSpec(), LabelSpec(), require_labels=True).patients


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
    from gliograde.data.caching.cache import CACHE_DTYPE

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


def _gb_per_s(nbytes: float, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.1f} GB/s"


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


def _classifier(seed: int):
    import pytorch_lightning as pl

    from gliograde.models.module import GradeClassifier

    pl.seed_everything(seed, verbose=False)
    return GradeClassifier(backbone="resnet18", in_channels=4, num_classes=2, scheduler={"name": "none"})


def _trainer(max_steps: int, callbacks: list):
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def measure_lightning_vs_plain(
    root: Path, cache_dir: Path, batch_size: int, warmup: int, steps: int, seed: int
) -> tuple[float, float, float]:
    """(ratio, Lightning s/step, plain s/step), each the median over ``steps`` steps.

    ``Trainer.fit`` trains a GradeClassifier; after each of its steps a callback runs one step
    of a plain PyTorch loop on a second, identically initialised GradeClassifier with the same
    optimizer, its own train loader over the same data and device hook. Interleaving step by
    step makes load from other processes hit both alike. A Lightning step is the time from
    the callback's return to its next call (batch fetch, transfer hooks, training_step,
    backward, optimizer step and Lightning's bookkeeping); a plain step is the same work
    written by hand. The first ``warmup`` steps of each are left out.
    """
    import pytorch_lightning as pl
    import torch.nn.functional as F

    from gliograde.models.module import OPTIMIZERS

    plain_dm = bench_datamodule(root, cache_dir, batch_size=batch_size, seed=seed)
    plain_model = _classifier(seed)
    plain_model.train()
    cfg = dict(plain_model.optimizer_cfg)
    optimizer = OPTIMIZERS[cfg.pop("name")](plain_model.parameters(), **cfg)
    batches = iter(())

    def plain_step() -> None:
        nonlocal batches
        batch = next(batches, None)
        if batch is None:  # a new epoch
            batches = iter(plain_dm.train_dataloader())
            batch = next(batches)
        batch = plain_dm.on_after_batch_transfer(batch, 0)
        loss = F.cross_entropy(plain_model(batch["image"]), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    class Interleave(pl.Callback):
        def __init__(self):
            self.lightning: list[float] = []
            self.plain: list[float] = []
            self.resumed: float | None = None

        def on_train_batch_end(self, *args, **kwargs) -> None:
            now = time.perf_counter()
            if self.resumed is not None:
                self.lightning.append(now - self.resumed)
            plain_step()
            self.plain.append(time.perf_counter() - now)
            self.resumed = time.perf_counter()

    clock = Interleave()
    dm = bench_datamodule(root, cache_dir, batch_size=batch_size, seed=seed)
    _trainer(warmup + steps + 1, [clock]).fit(_classifier(seed), datamodule=dm)
    lightning_s = float(np.median(clock.lightning[warmup:]))
    plain_s = float(np.median(clock.plain[warmup:]))
    return plain_s / lightning_s, lightning_s, plain_s


def _rss_child(spec: dict[str, Any]) -> None:
    """Inside a fresh process: a short training run, then print this process's peak RSS."""
    quiet_logs()
    dm = bench_datamodule(Path(spec["root"]), Path(spec["cache_dir"]), batch_size=spec["batch_size"])
    _trainer(spec["steps"], []).fit(_classifier(0), datamodule=dm)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"rss_mb": peak_kb / 1024}))


def measure_rss(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Peak RSS (MB) of each run, each in its own process (run side by side: RSS is per process)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    children = {
        name: subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--rss-child", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, spec in runs.items()
    }
    peaks = {}
    for name, child in children.items():
        out, err = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"RSS run {name!r} failed:\n{err[-3000:]}")
        peaks[name] = float(json.loads(out.strip().splitlines()[-1])["rss_mb"])
    return peaks


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


# ------------------------------------------------------------------------------- run
def run(opts: Options) -> tuple[dict[str, float], dict[str, Any]]:
    """Every measurement; returns (the KEYS figures, extra figures for the table)."""
    quiet_logs()
    from gliograde.data.caching.cache import available_cores
    from gliograde.data.synthetic.generator import generate_cohort

    work = Path(tempfile.mkdtemp(prefix="gliograde-bench-", dir=opts.workdir))
    extra: dict[str, Any] = {"shape": opts.shape, "patients": opts.patients, "cores": available_cores()}
    try:
        small_n = max(2, opts.patients // 4)
        extra["small_patients"] = small_n

        def say(text: str) -> None:
            print(f"[bench] {text}", flush=True)

        say(f"generating {opts.patients} + {small_n} synthetic patients of {opts.shape} in {work}")
        # Uncompressed .nii, as BraTS 2020 is downloaded: the figures are this project's costs,
        # not gzip's (the synthetic preset's .nii.gz adds about 0.1 s a patient to decode).
        large = generate_cohort(work / "cohort", opts.patients, seed=opts.seed, shape=opts.shape, compress=False)
        small = generate_cohort(
            work / "cohort-small", small_n, seed=opts.seed + 1, shape=opts.shape, compress=False
        )
        results: dict[str, float] = {}

        say("preprocessing (cache builds)")
        results["preprocess_s_per_patient"], _ = measure_preprocess(large, work, 1, opts.repeats)
        results["preprocess_s_per_patient_all_workers"], cache = measure_preprocess(
            large, work, None, opts.repeats
        )
        cache_dir = cache  # a built cache for this cohort: the DataModules below reuse it
        results["nibabel_read_s_per_patient"] = measure_nibabel_read(large, opts.repeats)

        say("loaders")
        default = bench_datamodule(large, cache_dir, batch_size=opts.batch_size)  # config defaults
        results["cache_bytes_per_patient"], results["cache_bytes_ratio"] = measure_cache_bytes(default.cached)
        results["cache_full_check_s_per_patient"], results["cache_open_check_s"] = measure_cache_checks(
            default.cached.directory, opts.repeats
        )
        delivered = extra["default_dtype"] = default.transfer_dtype
        results["loader_slices_per_s"] = extra[f"loader_{delivered}"] = measure_loader(default, opts.repeats)
        other = "float32" if delivered == "float16" else "float16"
        extra[f"loader_{other}"] = measure_loader(
            bench_datamodule(large, cache_dir, batch_size=opts.batch_size, transfer_dtype=other), opts.repeats
        )
        results["loader_slices_per_s_workers2"] = measure_loader(
            bench_datamodule(
                large, cache_dir, batch_size=opts.batch_size, num_workers=2, persistent_workers=True
            ),
            opts.repeats,
        )
        measure_loader_variants(default, large, work, opts, results, extra)
        x, y, z = opts.shape
        batch_shape = (opts.batch_size, len(default.modalities), y, x)
        for dtype in ("float16", "float32"):
            extra[f"memcpy_{dtype}"] = measure_memcpy(batch_shape, np.dtype(dtype))
        results["memcpy_slices_per_s"] = extra[f"memcpy_{delivered}"]
        results["article_loader_slices_per_s"] = measure_article_loader(
            large, opts.article_slices, opts.batch_size, z, opts.seed
        )

        say(f"Lightning vs plain PyTorch ({opts.warmup_steps} + {opts.train_steps} steps each)")
        ratio, lightning_s, plain_s = measure_lightning_vs_plain(
            large, cache_dir, opts.train_batch_size, opts.warmup_steps, opts.train_steps, opts.seed
        )
        results["lightning_vs_plain_ratio"] = ratio
        extra["lightning_samples_per_s"] = opts.train_batch_size / lightning_s
        extra["plain_samples_per_s"] = opts.train_batch_size / plain_s

        say(f"peak RSS of {opts.rss_steps}-step training runs ({small_n} and {opts.patients} patients)")
        small_cache = work / "cache-small"
        bench_datamodule(small, small_cache)  # build it here: the runs measure training, not building
        spec = {"batch_size": opts.train_batch_size, "steps": opts.rss_steps}
        peaks = measure_rss(
            {
                "small": {**spec, "root": str(small), "cache_dir": str(small_cache)},
                "large": {**spec, "root": str(large), "cache_dir": str(cache_dir)},
            }
        )
        results["rss_mb_small"], results["rss_mb_large"] = peaks["small"], peaks["large"]

        say("predict.py on one patient (a ResNet18 checkpoint of one training step)")
        results["predict_one_patient_s"] = measure_predict(small, small_cache, work, opts.repeats, opts.seed)

        from benchmarks.segmenter_bench import measure_predict_with_segmenter, measure_segment

        say("the segmenter: segment() of one patient, and predict.py through it on a patient without a mask")
        results["segment_one_patient_s"], segmenter = measure_segment(
            small, work / "cache-segmenter", work, opts.repeats, opts.seed
        )
        patient = next(p for p in sorted(small.iterdir()) if p.is_dir())
        results["predict_with_segmenter_s"] = measure_predict_with_segmenter(
            work / "predict-model.ckpt", segmenter, patient, work, opts.repeats, REPO
        )
        from benchmarks.ingest_bench import measure_ingest

        say("python -m gliograde.ingest on one hospital-like DICOM patient (skull, head pose, hospital grids)")
        results["ingest_one_patient_s"] = measure_ingest(
            small, work / "predict-model.ckpt", work, opts.repeats, opts.seed, REPO
        )
        return {k: float(results[k]) for k in KEYS}, extra
    finally:
        if opts.keep:
            print(f"[bench] kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def measure_predict(root: Path, cache_dir: Path, work: Path, repeats: int, seed: int) -> float:
    """Median wall seconds of ``predict.py`` grading one patient folder of ``root`` with a
    ResNet18 checkpoint trained for one step under the default slice rule (its contract)."""
    from gliograde.contract.input_contract import from_datamodule

    dm = bench_datamodule(root, cache_dir, slices={"strategy": "tumor_topk"}, batch_size=4)
    model = _classifier(seed)
    model.input_contract = from_datamodule(dm)
    trainer = _trainer(1, [])
    trainer.fit(model, datamodule=dm)
    ckpt = work / "predict-model.ckpt"
    trainer.save_checkpoint(ckpt, weights_only=True)
    patient = next(r.folder for r in dm.cohort.patients if r.patient_id == dm.cached.patient_ids[0])
    command = [
        sys.executable, str(REPO / "predict.py"), f"ckpt={ckpt}", f"input={patient}",
        f"output_dir={work / 'predict'}",
    ]  # fmt: skip

    def one() -> None:
        shutil.rmtree(work / "predict", ignore_errors=True)
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"predict.py failed:\n{done.stderr[-2000:]}")

    return _median_time(one, repeats)


# ----------------------------------------------------------------------------- report
def targets(r: dict[str, float]) -> list[tuple[str, str, bool]]:
    """(what, measured, met) for every target of the requirement."""
    from benchmarks.ingest_bench import INGEST_MAX_S
    from benchmarks.segmenter_bench import PREDICT_WITH_SEGMENTER_MAX_S, SEGMENT_MAX_S
    of_memcpy = r["loader_slices_per_s"] / r["memcpy_slices_per_s"]
    over_article = r["loader_slices_per_s"] / r["article_loader_slices_per_s"]
    over_peer = r["loader_slices_per_s"] / r["monai_peer_slices_per_s"]
    growth = r["rss_mb_large"] - r["rss_mb_small"]
    return [
        (
            f"preprocessing <= {PREPROCESS_MAX_S} s/patient per core",
            f"{r['preprocess_s_per_patient']:.3f} s",
            r["preprocess_s_per_patient"] <= PREPROCESS_MAX_S,
        ),
        (
            f"loader >= {LOADER_MIN_OF_MEMCPY} of memcpy",
            f"{of_memcpy:.2f}",
            of_memcpy >= LOADER_MIN_OF_MEMCPY,
        ),
        (
            f"loader > {LOADER_MIN_OVER_ARTICLE:.0f}x the article's",
            f"{over_article:,.0f}x",
            over_article > LOADER_MIN_OVER_ARTICLE,
        ),
        (
            f"loader >= {LOADER_MIN_OVER_PEER:.0f}x the MONAI peer",
            f"{over_peer:,.1f}x",
            over_peer >= LOADER_MIN_OVER_PEER,
        ),
        (
            f"Lightning / plain >= {LIGHTNING_MIN_RATIO}",
            f"{r['lightning_vs_plain_ratio']:.3f}",
            r["lightning_vs_plain_ratio"] >= LIGHTNING_MIN_RATIO,
        ),
        (f"peak RSS growth < {RSS_MAX_GROWTH_MB:.0f} MB", f"{growth:+.0f} MB", growth < RSS_MAX_GROWTH_MB),
        (
            f"predict.py, one patient < {PREDICT_MAX_S:.0f} s",
            f"{r['predict_one_patient_s']:.1f} s",
            r["predict_one_patient_s"] < PREDICT_MAX_S,
        ),
        (
            f"segment one patient <= {SEGMENT_MAX_S:.0f} s",
            f"{r['segment_one_patient_s']:.1f} s",
            r["segment_one_patient_s"] <= SEGMENT_MAX_S,
        ),
        (
            f"predict.py with a segmenter <= {PREDICT_WITH_SEGMENTER_MAX_S:.0f} s",
            f"{r['predict_with_segmenter_s']:.1f} s",
            r["predict_with_segmenter_s"] <= PREDICT_WITH_SEGMENTER_MAX_S,
        ),
        (
            f"ingest one hospital patient <= {INGEST_MAX_S:.0f} s",
            f"{r['ingest_one_patient_s']:.1f} s",
            r["ingest_one_patient_s"] <= INGEST_MAX_S,
        ),
    ]


def format_report(r: dict[str, float], extra: dict[str, Any], opts: Options) -> str:
    x, y, z = extra["shape"]
    cores = extra["cores"]
    dtype = extra["default_dtype"]
    rows = [
        (
            "preprocess_s_per_patient",
            f"{r['preprocess_s_per_patient']:.3f}",
            "s",
            "decode + z-score + cache write, 1 worker",
        ),
        (
            "preprocess_s_per_patient_all_workers",
            f"{r['preprocess_s_per_patient_all_workers']:.3f}",
            "s",
            f"{cores} workers (wall time / patients)",
        ),
        (
            "nibabel_read_s_per_patient",
            f"{r['nibabel_read_s_per_patient']:.3f}",
            "s",
            f"floor; preprocessing is {r['preprocess_s_per_patient'] / r['nibabel_read_s_per_patient']:.1f}x it",
        ),
        (
            "cache_bytes_per_patient",
            f"{r['cache_bytes_per_patient'] / 1e6:,.1f}",
            "MB",
            f"{r['cache_bytes_ratio']:.3f} of the full grid's (cache_bytes_ratio)",
        ),
        (
            "cache_full_check_s_per_patient",
            f"{r['cache_full_check_s_per_patient']:.4f}",
            "s",
            "crc32 of every block ("
            + _gb_per_s(r["cache_bytes_per_patient"], r["cache_full_check_s_per_patient"])
            + "): prepare, or an open after volumes.npy changed",
        ),
        (
            "cache_open_check_s",
            f"{r['cache_open_check_s']:.3f}",
            "s",
            "every other open: sizes, index sha256, header + sampled blocks",
        ),
        (
            "loader_slices_per_s",
            f"{r['loader_slices_per_s']:,.0f}",
            "slices/s",
            f"[{opts.batch_size},4,{y},{x}] {dtype}, num_workers=0; "
            + f"{r['loader_slices_per_s'] / r['memcpy_slices_per_s']:.2f} of memcpy",
        ),
        (
            "loader_slices_per_s_workers2",
            f"{r['loader_slices_per_s_workers2']:,.0f}",
            "slices/s",
            "num_workers=2",
        ),
        (
            "article_loader_slices_per_s",
            f"{r['article_loader_slices_per_s']:,.2f}",
            "slices/s",
            f"get_fdata() per item; ours is {r['loader_slices_per_s'] / r['article_loader_slices_per_s']:,.0f}x",
        ),
        (
            "memcpy_slices_per_s",
            f"{r['memcpy_slices_per_s']:,.0f}",
            "slices/s",
            f"ceiling: copy a {dtype} batch",
        ),
        (
            "monai_peer_slices_per_s",
            f"{r['monai_peer_slices_per_s']:,.0f}",
            "slices/s",
            f"CacheDataset, float32 volumes in RAM, a slice per item; ours is "
            + f"{r['loader_slices_per_s'] / r['monai_peer_slices_per_s']:,.1f}x",
        ),
        (
            "lightning_vs_plain_ratio",
            f"{r['lightning_vs_plain_ratio']:.3f}",
            "",
            f"{extra['lightning_samples_per_s']:.1f} vs {extra['plain_samples_per_s']:.1f} samples/s, "
            + f"batch {opts.train_batch_size} (median steps, interleaved)",
        ),
        (
            "rss_mb_small",
            f"{r['rss_mb_small']:,.0f}",
            "MB",
            f"{extra['small_patients']} patients, {opts.rss_steps} steps",
        ),
        (
            "rss_mb_large",
            f"{r['rss_mb_large']:,.0f}",
            "MB",
            f"{extra['patients']} patients, {opts.rss_steps} steps",
        ),
        (
            "predict_one_patient_s",
            f"{r['predict_one_patient_s']:.1f}",
            "s",
            "python predict.py on one patient, start-up included",
        ),
        (
            "segment_one_patient_s",
            f"{r['segment_one_patient_s']:.2f}",
            "s",
            "segment() of one cached patient (model=unet)",
        ),
        (
            "predict_with_segmenter_s",
            f"{r['predict_with_segmenter_s']:.1f}",
            "s",
            "python predict.py segmenter=SEG, one patient without a mask, start-up included",
        ),
        (
            "ingest_one_patient_s",
            f"{r['ingest_one_patient_s']:.1f}",
            "s",
            "python -m gliograde.ingest, one DICOM patient with skull, start-up included",
        ),
    ]
    width = max(len(k) for k, *_ in rows)
    lines = [f"gliograde bench: {extra['patients']} synthetic patients of {x}x{y}x{z}, {cores} cores", ""]
    lines += [f"  {k:<{width}}  {v:>12} {u:<9} {note}" for k, v, u, note in rows]
    lines += ["", "  loader beside its peers (slices/s, share of memcpy):"]
    memcpy = r["memcpy_slices_per_s"]
    for what, rate in (
        ("lean (default)", r["loader_slices_per_s"]),
        ("lean, data.num_workers=2", r["loader_slices_per_s_workers2"]),
        ("lean, two worker processes", extra["loader_worker_processes2"]),
        ("full grid", extra["loader_full_grid"]),
        ("MONAI CacheDataset peer", r["monai_peer_slices_per_s"]),
    ):
        lines.append(f"    {what:<40} {rate:>9,.0f}  {rate / memcpy:.2f}")
    lines += ["", f"  per batch of {opts.batch_size} (ms, medians):  {'lean':>8} {'full grid':>10}"]
    for stage in extra["profile_lean"]:
        cells = [extra[f"profile_{k}"][stage] for k in ("lean", "full")]
        shown = ["-" if v is None else f"{v:.2f}" for v in cells]
        lines.append(f"    {stage:<32} {shown[0]:>8} {shown[1]:>10}")
    lines += ["", "  transfer dtype (evidence for the default):"]
    for d in ("float16", "float32"):
        loader, ceiling = extra[f"loader_{d}"], extra[f"memcpy_{d}"]
        lines.append(
            f"    {d}: loader {loader:>9,.0f} slices/s, memcpy {ceiling:>9,.0f} slices/s, ratio {loader / ceiling:.2f}"
        )
    lines += ["", "  targets:"]
    for what, value, met in targets(r):
        lines.append(f"    {'PASS' if met else 'FAIL'}  {what:<40} {value}")
    if tuple(extra["shape"]) != FULL_SHAPE:
        lines.append(f"    (targets are for full-size {FULL_SHAPE} volumes; this run used {extra['shape']})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> Options | dict[str, Any]:
    defaults = {f.name: f.default for f in dataclasses.fields(Options)}  # one source: Options
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", type=Path, default=Path("logs/bench/bench.json"), help="JSON file to write")
    parser.add_argument("--patients", type=int, default=defaults["patients"], help="patients of the (large) cohort")
    parser.add_argument("--shape", type=int, nargs=3, default=list(defaults["shape"]), metavar=("X", "Y", "Z"))
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="loader batch size")
    parser.add_argument(
        "--train-batch-size", type=int, default=defaults["train_batch_size"], help="batch size of the training runs"
    )
    parser.add_argument("--warmup-steps", type=int, default=defaults["warmup_steps"])
    parser.add_argument("--train-steps", type=int, default=defaults["train_steps"], help="timed steps, Lightning and plain each")
    parser.add_argument("--rss-steps", type=int, default=defaults["rss_steps"], help="steps of each peak-RSS training run")
    parser.add_argument("--repeats", type=int, default=defaults["repeats"], help="repetitions behind each median")
    parser.add_argument("--article-slices", type=int, default=defaults["article_slices"], help="slices the article's loader reads")
    parser.add_argument("--workdir", type=Path, default=None, help="where the cohorts go (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated cohorts and caches")
    parser.add_argument("--seed", type=int, default=defaults["seed"])
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="the GPU training benchmark instead: see `python -m benchmarks.bench --gpu --help`",
    )
    args = parser.parse_args(argv)
    if args.rss_child is not None:
        return json.loads(args.rss_child)
    if args.patients < 2:
        parser.error("--patients must be at least 2 (one of each class)")
    if min(args.shape) < 1 or args.batch_size < 1 or args.train_batch_size < 1 or args.repeats < 1:
        parser.error("--shape, batch sizes and --repeats must be positive")
    if args.warmup_steps < 1 or args.train_steps < 2 or args.rss_steps < 1 or args.article_slices < 1:
        parser.error("--warmup-steps >= 1, --train-steps >= 2, --rss-steps >= 1 and --article-slices >= 1")
    return Options(
        out=args.out,
        patients=args.patients,
        shape=tuple(args.shape),
        batch_size=args.batch_size,
        train_batch_size=args.train_batch_size,
        warmup_steps=args.warmup_steps,
        train_steps=args.train_steps,
        rss_steps=args.rss_steps,
        repeats=args.repeats,
        article_slices=args.article_slices,
        workdir=args.workdir,
        keep=args.keep,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = sys.argv[1:] if argv is None else argv
    if "--gpu" in args:  # a benchmark of its own, with its own options
        from benchmarks import gpu_bench

        return gpu_bench.main([a for a in args if a != "--gpu"])
    opts = parse_args(argv)
    if isinstance(opts, dict):
        _rss_child(opts)
        return None
    start = time.perf_counter()
    results, extra = run(opts)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = opts.out.with_name(opts.out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, opts.out)
    print(format_report(results, extra, opts))
    print(f"\nwrote {opts.out} ({time.perf_counter() - start:.0f} s)")
    return results


if __name__ == "__main__":
    main()

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
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Options, REPO, bench_datamodule, quiet_logs
from benchmarks.data_path import (
    measure_article_loader,
    measure_cache_bytes,
    measure_cache_checks,
    measure_loader,
    measure_loader_variants,
    measure_memcpy,
    measure_nibabel_read,
    measure_preprocess,
)
from benchmarks.report import format_report
from benchmarks.training_loop import _rss_child, measure_lightning_vs_plain, measure_predict, measure_rss

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

# SEGMENT_MAX_S and PREDICT_WITH_SEGMENTER_MAX_S: see benchmarks.segmenter_bench


# ------------------------------------------------------------------------------- run
def run(opts: Options) -> tuple[dict[str, float], dict[str, Any]]:
    """Every measurement; returns (the KEYS figures, extra figures for the table)."""
    quiet_logs()
    from gliograde.data.caching.workers import available_cores
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

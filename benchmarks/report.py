"""The benchmark's targets on a 2-core CPU machine and its report: each figure against its target,
with the table of extra figures."""

from __future__ import annotations

from typing import Any

from benchmarks.common import FULL_SHAPE, Options, _gb_per_s


# Targets on a 2-core CPU machine (at full size).
PREPROCESS_MAX_S = 0.4
LOADER_MIN_OF_MEMCPY = 0.5
LOADER_MIN_OVER_ARTICLE = 1000.0
LOADER_MIN_OVER_PEER = 10.0
LIGHTNING_MIN_RATIO = 0.95
RSS_MAX_GROWTH_MB = 200.0
PREDICT_MAX_S = 15.0


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

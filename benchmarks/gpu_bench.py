"""``python -m benchmarks.bench --gpu [--tiny] [--out FILE] ...``

Training throughput on one GPU, in one run, on a synthetic cohort it generates (full size by
default), for every combination of precision (``32-true``, ``bf16-mixed``), ``channels_last``
and ``model.compile``; each combination trains one ResNet18 GradeClassifier three ways:

- ``model_only``: a plain loop (forward, cross-entropy, backward, optimizer step) over batches
  already on the device, cast to float32 as the DataModule's device hook casts them: the ceiling.
- ``fit_loader``: ``Trainer.fit`` with the DataModule's DataLoader (``num_workers=0``).
- ``fit_device_cache``: ``Trainer.fit`` with ``data.device_cache=true``.

Reported per combination: samples/s of each (steps after ``--warmup-steps``, timed between
CUDA synchronisations), the ratio fit / model-only (target >= 0.9 with the device cache), the
time to the first step (from the call, so a fit's includes building the DataModule's loader or
device copy; the model-only one includes compilation, which the fits then reuse), and the peak
GPU memory of each (``torch.cuda.max_memory_allocated``). Augmentation is off: the figures are
the data path and the training loop.

Without a GPU, or with ``--tiny``, it runs a tiny version on the CPU (small volumes, few
steps, one thread, no ``torch.compile``, which takes minutes there): a check that the command
runs, whose figures mean nothing; the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

FULL_SHAPE = (240, 240, 155)
TARGET_RATIO = 0.9
PRECISIONS = ("32-true", "bf16-mixed")
NO_COMPILE_ON_CPU = "skipped: torch.compile takes minutes on the CPU"


@dataclass
class GpuOptions:
    out: Path
    tiny: bool = False
    patients: int = 8
    shape: tuple[int, int, int] = FULL_SHAPE
    batch_size: int = 64
    warmup_steps: int = 10
    steps: int = 50
    compile: bool = True
    workdir: Path | None = None
    seed: int = 0


def tiny(opts: GpuOptions) -> GpuOptions:
    """The CPU check: small volumes, few steps, no compilation."""
    return replace(opts, tiny=True, patients=4, shape=(32, 32, 16), batch_size=4, warmup_steps=1, steps=1)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _classifier(seed: int, channels_last: bool, compile: bool):
    import pytorch_lightning as pl

    from gliograde.models.module import GradeClassifier

    pl.seed_everything(seed, verbose=False)
    return GradeClassifier(
        backbone="resnet18",
        in_channels=4,
        num_classes=2,
        scheduler={"name": "none"},
        channels_last=channels_last,
        compile=compile,
    )


def measure_model_only(model, batches: list[dict[str, Any]], precision: str, warmup: int, steps: int, device):
    """(samples/s, seconds to the first step) of a plain training loop on device-resident batches."""
    import torch
    import torch.nn.functional as F

    from gliograde.models.module import OPTIMIZERS

    model.to(device).train()
    cfg = dict(model.optimizer_cfg)
    optimizer = OPTIMIZERS[cfg.pop("name")](model.parameters(), **cfg)
    autocast = precision == "bf16-mixed"

    def step(batch: dict[str, Any]) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(batch["image"]), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    _sync(device)
    start = time.perf_counter()
    step(batches[0])
    _sync(device)
    first = time.perf_counter() - start
    for i in range(1, warmup):
        step(batches[i % len(batches)])
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(batches[(warmup + i) % len(batches)])
    _sync(device)
    samples = steps * len(batches[0]["label"])
    return samples / (time.perf_counter() - start), first


def measure_fit(model, dm, precision: str, warmup: int, steps: int, device) -> tuple[float, float]:
    """(samples/s, seconds to the first step) of ``Trainer.fit`` for ``warmup + steps`` steps."""
    import pytorch_lightning as pl

    class Clock(pl.Callback):
        """Times the first step, and the steps after the warm-up as one span: synchronising
        after every step would keep the host from running ahead of the GPU, as it does unwatched."""

        def __init__(self):
            self.done = 0
            self.first = self.span_start = self.span_end = math.nan
            self.samples = 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.done += 1
            if self.done > warmup:
                self.samples += len(batch["label"])
            if self.done in (1, warmup, warmup + steps):
                _sync(device)
                now = time.perf_counter()
                if self.done == 1:
                    self.first = now - start
                if self.done == warmup:
                    self.span_start = now
                if self.done == warmup + steps:
                    self.span_end = now

    clock = Clock()
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        benchmark=device.type == "cuda",
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[clock],
    )
    _sync(device)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return clock.samples / (clock.span_end - clock.span_start), clock.first


def _resident_batches(dm, device, count: int) -> list[dict[str, Any]]:
    """``count`` training batches moved to ``device`` and cast as the device hook casts them."""
    batches = []
    for batch in dm.dataloader("train"):
        moved = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        batches.append(dm.on_after_batch_transfer(moved, 0))
        if len(batches) == count:
            break
    return batches


def run(opts: GpuOptions) -> dict[str, Any]:
    """Every measurement; returns the JSON record."""
    import torch

    from benchmarks.common import bench_datamodule, quiet_logs
    from gliograde.data.synthetic.generator import generate_cohort

    quiet_logs()
    has_gpu = torch.cuda.is_available()
    if not has_gpu and not opts.tiny:
        print("[gpu-bench] no GPU: running the tiny CPU version", flush=True)
        opts = tiny(opts)
    device = torch.device("cuda" if has_gpu and not opts.tiny else "cpu")
    compile_note = None
    compiles = [False]
    if device.type == "cpu":
        compile_note = NO_COMPILE_ON_CPU
    elif opts.compile:
        compiles = [False, True]
    else:
        compile_note = "skipped: --no-compile"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(1)  # several threads on a shared small machine mostly wait on each other
    work = Path(tempfile.mkdtemp(prefix="gliograde-gpu-bench-", dir=opts.workdir))
    began = time.perf_counter()

    def say(text: str) -> None:
        print(f"[gpu-bench {time.perf_counter() - began:5.0f} s] {text}", flush=True)

    try:
        say(f"generating {opts.patients} synthetic patients of {opts.shape} in {work}")
        root = generate_cohort(work / "cohort", opts.patients, seed=opts.seed, shape=opts.shape)
        cache = work / "cache"

        def datamodule(device_cache: bool):
            return bench_datamodule(
                root,
                cache,
                batch_size=opts.batch_size,
                seed=opts.seed,
                device_cache=device_cache,
                preprocess={"workers": None},
            )

        plain = datamodule(False)
        slices = len(plain.datasets["train"])
        resident = _resident_batches(plain, device, 4)
        record: dict[str, Any] = {
            "mode": "tiny" if opts.tiny else "gpu",
            "measured_on_gpu": device.type == "cuda",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "shape": list(opts.shape),
            "patients": opts.patients,
            "slices": slices,
            "batch_size": opts.batch_size,
            "warmup_steps": opts.warmup_steps,
            "steps": opts.steps,
            "augment": False,
            "threads": torch.get_num_threads(),
            "compile": compile_note or "measured",
            "target_ratio": TARGET_RATIO,
            "runs": [],
        }
        for precision in PRECISIONS:
            for channels_last in (False, True):
                for compiled in compiles:
                    name = f"{precision}, channels_last={channels_last}, compile={compiled}"
                    say(name)
                    # One model per combination: the fits reuse what the model-only run compiled.
                    model = _classifier(opts.seed, channels_last, compiled)
                    row: dict[str, Any] = {
                        "precision": precision,
                        "channels_last": channels_last,
                        "compile": compiled,
                    }
                    _reset_peak(device)
                    row["model_only_samples_per_s"], row["model_only_first_step_s"] = measure_model_only(
                        model, resident, precision, opts.warmup_steps, opts.steps, device
                    )
                    row["model_only_peak_mb"] = _peak_mb(device)
                    for way, device_cache in (("loader", False), ("device_cache", True)):
                        _reset_peak(device)
                        rate, first = measure_fit(
                            model, datamodule(device_cache), precision, opts.warmup_steps, opts.steps, device
                        )
                        row[f"fit_{way}_samples_per_s"] = rate
                        row[f"fit_{way}_first_step_s"] = first
                        row[f"fit_{way}_peak_mb"] = _peak_mb(device)
                        row[f"ratio_{way}"] = rate / row["model_only_samples_per_s"]
                    record["runs"].append(row)
        peaks = [_peak_of(row) for row in record["runs"]]
        record["peak_mb"] = max(peaks) if None not in peaks else None
        record["total_s"] = time.perf_counter() - began
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _peak_of(row: dict[str, Any]) -> float | None:
    """The highest peak memory of a combination's three measurements (None off the GPU)."""
    peaks = [v for k, v in row.items() if k.endswith("_peak_mb") and v is not None]
    return max(peaks) if peaks else None


def format_report(record: dict[str, Any]) -> str:
    """A table: one row per combination, samples/s and ratios, first-step times, peak memory."""
    x, y, z = record["shape"]
    head = (
        f"gliograde GPU bench ({record['mode']}): {record['device']}, {record['slices']} slices of "
        f"{x}x{y}x{z} volumes, batch {record['batch_size']}, {record['steps']} timed steps"
    )
    lines = [head, f"  compile: {record['compile']}", ""]
    columns = (
        f"  {'precision':<11} {'ch_last':<7} {'compile':<7} {'model':>9} {'loader':>9} {'dev_cache':>9} "
        f"{'ratio_ld':>8} {'ratio_dc':>8} {'first_ld':>8} {'first_dc':>8} {'peak_MB':>8}"
    )
    lines += [columns + "   (samples/s; first step in s)"]
    for r in record["runs"]:
        peak = "-" if _peak_of(r) is None else f"{_peak_of(r):.0f}"
        lines.append(
            f"  {r['precision']:<11} {str(r['channels_last']):<7} {str(r['compile']):<7} "
            f"{r['model_only_samples_per_s']:>9.1f} {r['fit_loader_samples_per_s']:>9.1f} "
            f"{r['fit_device_cache_samples_per_s']:>9.1f} {r['ratio_loader']:>8.3f} "
            f"{r['ratio_device_cache']:>8.3f} {r['fit_loader_first_step_s']:>8.2f} "
            f"{r['fit_device_cache_first_step_s']:>8.2f} {peak:>8}"
        )
    target = f"  target: fit with device_cache / model-only >= {record['target_ratio']}"
    if record["measured_on_gpu"]:
        met = sum(r["ratio_device_cache"] >= record["target_ratio"] for r in record["runs"])
        lines += ["", f"{target}: met by {met} of {len(record['runs'])} combinations"]
    else:
        lines += ["", f"{target}: not judged (a CPU check that the benchmark runs; its figures mean nothing)"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> GpuOptions:
    defaults = GpuOptions(out=Path("logs/bench/gpu_bench.json"))
    description = __doc__.split("\n\n")[1]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench --gpu", description=description)
    parser.add_argument("--out", type=Path, default=defaults.out, help="JSON file to write")
    parser.add_argument("--tiny", action="store_true", help="the tiny CPU version (automatic without a GPU)")
    parser.add_argument("--patients", type=int, default=defaults.patients)
    parser.add_argument("--shape", type=int, nargs=3, default=list(defaults.shape), metavar=("X", "Y", "Z"))
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="timed steps of each measurement")
    parser.add_argument("--no-compile", action="store_true", help="leave out the model.compile combinations")
    parser.add_argument("--workdir", type=Path, default=None, help="where the cohort goes (default: temp)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.patients < 2:
        parser.error("--patients must be at least 2 (one of each class)")
    if min(args.shape) < 1 or args.batch_size < 1 or args.warmup_steps < 1 or args.steps < 1:
        parser.error("--shape, --batch-size, --warmup-steps and --steps must be positive")
    opts = GpuOptions(
        out=args.out,
        patients=args.patients,
        shape=tuple(args.shape),
        batch_size=args.batch_size,
        warmup_steps=args.warmup_steps,
        steps=args.steps,
        compile=not args.no_compile,
        workdir=args.workdir,
        seed=args.seed,
    )
    return tiny(opts) if args.tiny else opts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    record = run(opts)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = opts.out.with_name(opts.out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, opts.out)
    print(format_report(record))
    print(f"\nwrote {opts.out} ({record['total_s']:.0f} s)")
    return record

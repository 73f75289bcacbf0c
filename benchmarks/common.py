"""What the benchmark's parts share: its options, the cohort's full size, timing and quiet logs, and
a data module over a benchmark cohort."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


FULL_SHAPE = (240, 240, 155)
REPO = Path(__file__).resolve().parents[1]


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


def _gb_per_s(nbytes: float, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.1f} GB/s"

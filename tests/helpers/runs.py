"""A tiny trained run, made once per test session and shared by the tests that need a model."""

from __future__ import annotations

from pathlib import Path

from helpers.commands import run_python
from filelock import FileLock

from gliograde.data.synthetic.generator import generate_cohort


def tiny_train_args(paths: dict[str, Path], *overrides: str) -> list[str]:
    """``train.py`` and its arguments for a one-epoch ResNet18 on the tiny cohort at
    ``paths["cohort"]`` (cache at ``paths["cache"]``), one checkpoint kept; ``overrides`` last."""
    return [
        "train.py",
        "data=brats2020",
        f"data.root={paths['cohort']}",
        f"data.cache_dir={paths['cache']}",
        "data.slices.k=4",
        "data.batch_size=16",
        "data.progress=false",
        "data.preprocess.workers=1",
        "data.split.train=0.5",
        "data.split.val=0.25",
        "data.split.test=0.25",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "callbacks.progress_bar.refresh_rate=0",
        "callbacks.last_checkpoint=null",  # never resumed: the best checkpoint is enough
        *overrides,
    ]


def debug_sweep_args(cache: Path, sweep: Path, *overrides: str) -> list[str]:
    """``train.py -m`` and its arguments for a sweep of ``debug=fast`` jobs on a BraTS-layout
    cohort (set ``data.root`` in ``overrides``), cache at ``cache``, jobs under ``sweep``."""
    return [
        "train.py",
        "-m",
        "data=brats2020",
        f"data.cache_dir={cache}",
        "data.slices.k=3",
        "data.progress=false",
        "data.preprocess.workers=1",
        "data.split.train=0.5",
        "data.split.val=0.25",
        "data.split.test=0.25",
        "debug=fast",
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.sweep.dir={sweep}",
        *overrides,
    ]


def tiny_run(tmp_path_factory) -> dict[str, Path]:
    """Cohort (16 patients of 40x40x20, half LGG), cache and run directory of a one-epoch ResNet18."""
    base = tmp_path_factory.getbasetemp() / "tiny_run"
    base.mkdir(exist_ok=True)
    paths = {"cohort": base / "cohort", "cache": base / "cache", "run": base / "run"}
    with FileLock(str(base / ".lock")):
        if not (paths["run"] / "metrics.json").is_file():
            generate_cohort(
                paths["cohort"], patients=16, seed=7, shape=(40, 40, 20), lgg_fraction=0.5, compress=False
            )
            result = run_python(*tiny_train_args(paths, f"hydra.run.dir={paths['run']}"))
            assert result.returncode == 0, result.stderr[-3000:]
    return paths


def tiny_segmenter_run(tmp_path_factory) -> dict[str, Path]:
    """``tiny_run``'s cohort and cache, its classifier (``run``) and a segmenter trained on the
    same patients for 5 epochs (``segmenter``, about 40 s on 2 cores)."""
    paths = dict(tiny_run(tmp_path_factory))
    base = tmp_path_factory.getbasetemp() / "tiny_run"
    paths["segmenter"] = base / "segmenter"
    with FileLock(str(base / ".segmenter.lock")):
        if not (paths["segmenter"] / "metrics.json").is_file():
            result = run_python(
                *tiny_train_args(
                    paths, "task=segment", "trainer.max_epochs=5", f"hydra.run.dir={paths['segmenter']}"
                )
            )
            assert result.returncode == 0, result.stderr[-3000:]
    return paths

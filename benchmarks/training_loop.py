"""The training loop's costs: Lightning against a plain loop, the resident memory of a training run,
and predict.py on one patient."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, _median_time, bench_datamodule, quiet_logs


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
            [sys.executable, "-m", "benchmarks.bench", "--rss-child", json.dumps(spec)],
            cwd=REPO,
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

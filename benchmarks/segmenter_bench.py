"""The segmenter's costs for ``benchmarks.bench``: ``segment()`` of one whole patient from its
cached volume, and ``python predict.py ... segmenter=SEG`` grading one patient folder without a
mask (start-up, decoding, segmentation, the classifier's slices, Grad-CAM, outline and report).

Both models are the defaults (``model=unet``, ResNet18) after one training step: what they
cost does not depend on what they learnt.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

SEGMENT_MAX_S = 5.0
PREDICT_WITH_SEGMENTER_MAX_S = 20.0


def _one_step_segmenter(root: Path, cache_dir: Path, path: Path, seed: int):
    """A segmenter checkpoint of the default network, trained for one step on ``root``, and the
    datamodule it was trained from."""
    import pytorch_lightning as pl

    from gliograde.contract.input_contract import from_datamodule
    from gliograde.segmentation.datamodule import SegmentationDataModule
    from gliograde.segmentation.module import TumourSegmenter

    pl.seed_everything(seed, verbose=False)
    dm = SegmentationDataModule(
        root=root,
        cache_dir=cache_dir,
        progress=False,
        batch_size=4,
        split={"train": 1.0, "val": 0.0, "test": 0.0},
        slices={"strategy": "brain", "min_brain_fraction": 0.01},
    )
    dm.prepare_data()
    dm.setup("fit")
    model = TumourSegmenter(in_channels=dm.num_channels, features=[8, 16, 32, 64, 128, 8])
    model.input_contract = from_datamodule(dm, kind="segmenter")
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(path, weights_only=True)
    return path, dm


def measure_segment(root: Path, cache_dir: Path, work: Path, repeats: int, seed: int) -> tuple[float, Path]:
    """(median seconds of ``segment()`` of one cached patient, the segmenter checkpoint)."""
    from gliograde.segmentation.inference import open_segmenter

    checkpoint, dm = _one_step_segmenter(root, cache_dir, work / "segmenter.ckpt", seed)
    segmenter = open_segmenter(checkpoint, device="cpu")
    cached = dm.cached
    volume = cached.volume(0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        segmenter.segment(volume, cached.modalities)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], checkpoint


def measure_predict_with_segmenter(
    classifier: Path, segmenter: Path, patient: Path, work: Path, repeats: int, repo: Path
) -> float:
    """Median wall seconds of predict.py grading ``patient`` (a folder; its mask left out) with
    ``classifier`` through ``segmenter``."""
    folder = work / "no-mask" / patient.name
    shutil.rmtree(folder.parent, ignore_errors=True)
    shutil.copytree(patient, folder)
    for mask in folder.glob("*_seg.nii*"):
        mask.unlink()
    command = [
        sys.executable, str(repo / "predict.py"), f"ckpt={classifier}", f"input={folder}",
        f"segmenter={segmenter}", "min_tumour_ml=0", f"output_dir={work / 'predict-seg'}",
    ]  # fmt: skip
    times = []
    for _ in range(repeats):
        shutil.rmtree(work / "predict-seg", ignore_errors=True)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"predict.py with a segmenter failed:\n{done.stderr[-2000:]}")
    return sorted(times)[len(times) // 2]

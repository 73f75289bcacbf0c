"""Export a trained model to leave the lab: ``python -m gliograde.export RUN`` (or a checkpoint).

Writes ``RUN/export/``: ``model.onnx`` (slices ``[B, C, H, W]`` float32 to class probabilities,
dynamic batch), checked against the checkpoint under onnxruntime before anything is kept, and
a model card (``model_card.json``, ``MODEL_CARD.md``) with the input contract, intended use,
training cohort, metrics with intervals, threshold, the run's temperature (when it was fitted on
this checkpoint) and the commands that made the run. The graph also outputs the logits, which
predict.py scales by that temperature.
``predict.py ckpt=RUN/export`` runs the folder with onnxruntime alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from gliograde.data.crops import input_channels
from gliograde.errors import exit_on_user_error
from gliograde.inference.calibration import CALIBRATION_FILE, file_sha256, read_calibration
from gliograde.inference.models import CARD_FILE, ONNX_FILE, ModelSourceError, TorchModel, find_checkpoint
from gliograde.model_card import build_card, render_markdown

OPSET = 17
TOLERANCE = 1e-4


def export(source: str | Path, output: str | Path | None = None) -> Path:
    """Export the checkpoint (or a run's best) at ``source``; return the export folder."""
    source = Path(source).expanduser()
    if source.is_dir():
        if not (source / "checkpoints").is_dir():
            raise ModelSourceError(
                f"{source}: not a run directory (no checkpoints/); pass RUN or RUN/checkpoints/X.ckpt"
            )
        run, checkpoint = source, find_checkpoint(source)
    elif source.is_file():
        checkpoint = source
        run = source.parent.parent if (source.parent.parent / "config.yaml").is_file() else None
    else:
        raise ModelSourceError(f"{source}: no such run directory or checkpoint")
    target = Path(output) if output else (run or checkpoint.parent) / "export"
    model = TorchModel(checkpoint)

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_onnx(model, tmp / ONNX_FILE)
        worst = _check_onnx(model, tmp / ONNX_FILE)
        digest = hashlib.sha256((tmp / ONNX_FILE).read_bytes()).hexdigest()
        checkpoint_sha = file_sha256(checkpoint)
        calibration = _calibration(run, checkpoint_sha)
        card = build_card(model, checkpoint, run, calibration, onnx_sha256=digest, onnx_max_abs_diff=worst)
        card["model"]["checkpoint_sha256"] = checkpoint_sha
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "MODEL_CARD.md").write_text(render_markdown(card))
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _calibration(run: Path | None, checkpoint_sha: str) -> dict | None:
    """The run's stored temperature when it was fitted on the exported checkpoint; None (and said)
    otherwise: a temperature of another checkpoint is never carried along."""
    record = None if run is None else read_calibration(run)
    if record is None:
        return None
    if record.get("checkpoint_sha256") != checkpoint_sha:
        print(
            f"Not exporting {run / CALIBRATION_FILE}: it was fitted for another checkpoint "
            f"({record.get('checkpoint')}); re-run evaluate.py calibration=temperature to calibrate this one"
        )
        return None
    print(
        f"Exporting the temperature T={record['temperature']:.4f} (tta={record['tta']}) "
        f"of {run / CALIBRATION_FILE}"
    )
    return record


def _probability_net(model: TorchModel):
    import torch

    class Probabilities(torch.nn.Module):
        """The backbone followed by softmax: the exported graph gives probabilities, and the logits
        that a stored temperature scales."""

        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.net(image)
            return logits.softmax(dim=1), logits

    return Probabilities(model.model).cpu().eval()


def _example(model: TorchModel, batch: int, seed: int = 0) -> np.ndarray:
    height, width = model.contract.get("image_size") or (64, 64)
    rng = np.random.default_rng(seed)
    channels = input_channels(len(model.contract["modalities"]), int(model.contract.get("context", 0)))
    # z-scored brain voxels: about N(0, 1), background 0, stored as float16 like the cache
    images = rng.standard_normal((batch, channels, height, width)).astype(np.float16)
    images[..., : height // 8, :] = 0
    return images.astype(np.float32)


def _write_onnx(model: TorchModel, path: Path) -> None:
    import torch

    net = _probability_net(model)
    spatial = {} if model.contract.get("image_size") else {2: "height", 3: "width"}
    example = torch.from_numpy(_example(model, 2))
    with torch.no_grad():
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["probabilities", "logits"],
            dynamic_axes={
                "image": {0: "batch", **spatial},
                "probabilities": {0: "batch"},
                "logits": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )


def _check_onnx(model: TorchModel, path: Path) -> float:
    """Largest probability difference between onnxruntime and PyTorch on batches of 1 and 5."""
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    net = _probability_net(model)
    worst = 0.0
    for batch, seed in ((1, 1), (5, 2)):
        images = _example(model, batch, seed)
        with torch.no_grad():
            expected = net(torch.from_numpy(images))[0].numpy()
        got = session.run(None, {"image": images})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > TOLERANCE:
        raise RuntimeError(f"the ONNX graph differs from the checkpoint by {worst:.2e} (> {TOLERANCE})")
    return worst


def _swap_in(new: Path, target: Path) -> None:
    """Replace ``target`` by the complete folder ``new``; a reader never sees a partial export."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gliograde.export", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="run directory (its best checkpoint) or checkpoint file")
    parser.add_argument("--output", help="export folder (default: RUN/export)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        folder = export(args.source, args.output)
    print(f"Exported to {folder}")


if __name__ == "__main__":
    main(sys.argv[1:])

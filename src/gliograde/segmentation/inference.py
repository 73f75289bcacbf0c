"""A trained segmenter, opened for use: whole-tumour masks of whole patients, without Lightning."""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from gliograde.contract.input_contract import ContractError, grid_mismatch, kind_of
from gliograde.segmentation.network import PaddedUNet
from gliograde.segmentation.volume import SegmenterError, segment_volume

if TYPE_CHECKING:
    from gliograde.segmentation.onnx_segmenter import OnnxSegmenter


@dataclass
class Segmenter:
    """A segmenter checkpoint's network in eval mode, with its contract and its run's test Dice."""

    path: Path
    contract: dict
    test_dice: float | None
    threshold: float = 0.5
    network: torch.nn.Module | None = field(default=None, repr=False)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"), repr=False)
    kind: ClassVar[str] = "checkpoint"

    def segment(self, volume: np.ndarray, stored: Sequence[str]) -> np.ndarray:
        """volume: one patient [z, C, y, x] on the full grid as the cache holds it (float16 or
        float32, z-scored; channels = `stored`, in MODALITIES order); returns a bool whole-tumour
        mask [z, y, x] on the same grid. Axial slices in batches; slices without brain are skipped
        (all False)."""
        if self.network is None:
            raise SegmenterError(f"{self.path}: no network loaded; open it with open_segmenter")
        return segment_volume(volume, stored, self.contract, self.predict_batch, self.threshold, self.path)

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """Tumour probabilities ``[B, H, W]`` (float32) of float32 slices ``[B, C, H, W]``."""
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            return self.network(batch).float().sigmoid()[:, 0].cpu().numpy()


def open_segmenter(source: str | Path, device: Any = None) -> Segmenter | OnnxSegmenter:
    """A segmenter run directory (its best checkpoint, as find_checkpoint does for classifiers),
    a .ckpt file, or an export folder that bundles one (an OnnxSegmenter). One-line
    SegmenterError for: missing path, a classifier run/checkpoint ("... is a classifier
    (task=classify) ..."), a damaged/truncated checkpoint, an export without a segmenter or with
    a damaged one."""
    from gliograde.inference.models import CARD_FILE, ModelSourceError, find_checkpoint
    from gliograde.segmentation.onnx_segmenter import open_bundled

    path = Path(source).expanduser()
    if path.is_dir() and (path / CARD_FILE).is_file():
        return open_bundled(path)
    if path.is_dir():
        try:
            path = find_checkpoint(path, kind="segmenter")
        except ModelSourceError as err:
            raise SegmenterError(f"segmenter={source}: {err}") from None
        except ContractError:
            raise SegmenterError(
                f"{source} is a classifier (task=classify), not a segmenter: pass a run trained with "
                "task=segment as segmenter=, and a classifier as ckpt="
            ) from None
    elif not path.is_file():
        raise SegmenterError(f"segmenter={source}: no such run directory or checkpoint file")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise SegmenterError(
            f"{path}: unreadable checkpoint ({type(exc).__name__}): truncated or damaged"
        ) from None
    if not isinstance(stored, dict) or "state_dict" not in stored or "hyper_parameters" not in stored:
        raise SegmenterError(f"{path}: not a gliograde training checkpoint (no hyper_parameters/state_dict)")
    contract = stored.get("input_contract") or {}
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    if kind_of(contract) != "segmenter":
        where = run if run is not None else path
        raise SegmenterError(
            f"{where} is a classifier (task=classify), not a segmenter: pass a run trained with "
            "task=segment as segmenter=, and a classifier as ckpt="
        )
    hparams = stored["hyper_parameters"]
    network = PaddedUNet(int(hparams["in_channels"]), hparams["features"], float(hparams.get("dropout", 0.0)))
    weights = {k[len("net.") :]: v for k, v in stored["state_dict"].items() if k.startswith("net.")}
    try:
        network.load_state_dict(weights)
    except RuntimeError:
        raise SegmenterError(f"{path}: its weights do not fit its network (damaged checkpoint)") from None
    target = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    network = network.to(target).eval()
    return Segmenter(path, dict(contract), _test_dice(run), network=network, device=target)


def _test_dice(run: Path | None) -> float | None:
    """``test/patient_dice`` of the run's metrics.json, None when unknown."""
    if run is None:
        return None
    try:
        value = json.loads((run / "metrics.json").read_text()).get("test/patient_dice")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def check_compatible(segmenter: Mapping, classifier: Mapping, source: str) -> None:
    """Refuse (SegmenterError, one line naming source and the difference) a segmenter whose
    contract does not fit a classifier's: its modalities must be among the classifier's; grid
    (shape, spacing, orientation), preprocess (normalisation, reorient, clip_percentiles, cache
    dtype) must be equal."""
    if kind_of(segmenter) != "segmenter":
        raise SegmenterError(f"{source} is a {kind_of(segmenter)} (task=classify), not a segmenter")
    extra = [m for m in segmenter["modalities"] if m not in classifier["modalities"]]
    if extra:
        raise SegmenterError(
            f"{source}: the segmenter reads modalities {list(segmenter['modalities'])}, but {extra} "
            f"are not among the classifier's {list(classifier['modalities'])}"
        )
    ours, theirs = segmenter.get("grid"), classifier.get("grid")
    if (ours is None) != (theirs is None):
        unknown = "segmenter's" if ours is None else "classifier's"
        raise SegmenterError(
            f"{source}: the {unknown} input grid is not recorded, so the two grids cannot be compared"
        )
    if ours is not None:
        why = grid_mismatch(classifier, ours)
        if why:
            raise SegmenterError(f"{source}: the segmenter's grid has {why} (the classifier's)")
    for key in ("normalisation", "reorient", "clip_percentiles", "cache_dtype"):
        mine, other = segmenter["preprocess"].get(key), classifier["preprocess"].get(key)
        if mine != other:
            raise SegmenterError(
                f"{source}: the segmenter was trained with preprocess {key}={mine}, the classifier with {other}"
            )


__all__ = ["Segmenter", "SegmenterError", "check_compatible", "open_segmenter", "segment_volume"]

"""A segmenter bundled in an export folder (``segmenter.onnx``, named by the sealed model card),
run with onnxruntime alone: the same masks as the PyTorch segmenter, without Lightning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gliograde.errors import ConfigError
from gliograde.segmentation.volume import SegmenterError, segment_volume

SEGMENTER_ONNX_FILE = "segmenter.onnx"
CARD_SECTION = "segmenter"


@dataclass
class OnnxSegmenter:
    """``segmenter.onnx`` of an export under onnxruntime, with the contract and test Dice its
    card records. ``segment`` gives the masks :class:`~gliograde.segmentation.inference.Segmenter`
    gives."""

    path: Path
    contract: dict
    test_dice: float | None
    threshold: float = 0.5
    session: Any = field(default=None, repr=False)
    kind: ClassVar[str] = "onnx"

    def segment(self, volume: np.ndarray, stored: Sequence[str]) -> np.ndarray:
        """The bool whole-tumour mask ``[z, y, x]`` of one patient ``[z, C, y, x]`` (channels =
        ``stored``), as ``Segmenter.segment`` makes it."""
        return segment_volume(volume, stored, self.contract, self.predict_batch, self.threshold, self.path)

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """Tumour probabilities ``[B, H, W]`` (float32) of float32 slices ``[B, C, H, W]``."""
        return self.session.run(None, {"image": np.ascontiguousarray(images, dtype=np.float32)})[0][:, 0]


def open_bundled(folder: str | Path) -> OnnxSegmenter:
    """The segmenter bundled in the export ``folder``; one-line SegmenterError when it bundles
    none, when its card is edited or damaged, or when ``segmenter.onnx`` is not the graph the
    card was sealed with (checked before onnxruntime reads it)."""
    found = bundled_segmenter(folder)
    if found is None:
        raise SegmenterError(
            f"{folder}: this export bundles no segmenter; export it with "
            "python -m gliograde.export RUN segmenter=SEG_RUN, or pass a segmenter run as segmenter="
        )
    return found


def bundled_segmenter(folder: str | Path) -> OnnxSegmenter | None:
    """The segmenter bundled in the export ``folder``, None when the export has none. The card
    is verified against its seal and ``segmenter.onnx`` against the card's sha256 before
    onnxruntime opens it: an edited card or a swapped, truncated or damaged graph is one line."""
    from gliograde.inference.calibration import file_sha256
    from gliograde.inference.models import onnx_session, read_card

    folder = Path(folder).expanduser()
    try:
        card = read_card(folder)
    except ConfigError as err:  # SealError, ModelSourceError
        raise SegmenterError(str(err)) from None
    section = card.get(CARD_SECTION)
    if section is None:
        return None
    run = (card.get("training") or {}).get("run_dir") or "RUN"
    redo = f"re-export it (python -m gliograde.export {run} segmenter=SEG_RUN)"
    path = folder / SEGMENTER_ONNX_FILE
    if not path.is_file():
        raise SegmenterError(f"{path}: missing, though the model card bundles a segmenter; {redo}")
    expected = section["segmenter_onnx_sha256"]
    actual = file_sha256(path)
    if actual != expected:
        raise SegmenterError(
            f"{path}: its sha256 {actual[:12]}... is not the model card's segmenter_onnx_sha256 "
            f"{str(expected)[:12]}... (replaced, truncated or damaged since export); {redo}"
        )
    session = onnx_session(path, redo, SegmenterError)
    dice = (section.get("test_dice") or {}).get("mean")
    return OnnxSegmenter(
        path, dict(section["input_contract"]), dice, float(section.get("threshold", 0.5)), session=session
    )


__all__ = ["SEGMENTER_ONNX_FILE", "OnnxSegmenter", "bundled_segmenter", "open_bundled"]

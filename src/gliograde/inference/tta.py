"""Test-time augmentation: a slice's class probabilities averaged over flipped and rotated views.

``flip`` is the slice and its mirror along the last image axis: left-right on axial (``[y, x]``)
and coronal (``[z, x]``) slices, but anterior-posterior on sagittal ones (``[z, y]``).
``flip_rot`` is the eight views of the square's symmetry group (four 90-degree rotations, each
with and without the mirror). Views are whole batches, so a model sees ``B`` slices per call
whatever the mode.
Works on torch tensors and NumPy arrays alike (the ONNX path has no torch tensors); imports
nothing heavy, since the config schema reads :data:`TTA_MODES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gliograde.errors import ConfigError

TTA_MODES = ("none", "flip", "flip_rot")
_VIEWS = {
    "none": ((False, 0),),
    "flip": ((False, 0), (True, 0)),
    # turns outer, so that flip's two views come first: flip_rot extends flip
    "flip_rot": tuple((flip, turns) for turns in range(4) for flip in (False, True)),
}


def check_tta(mode: str, height: int, width: int) -> None:
    """Refuse an unknown mode, and rotations of slices that are not square."""
    if mode not in TTA_MODES:
        raise ConfigError(f"tta={mode!r} must be one of {list(TTA_MODES)}")
    if mode == "flip_rot" and height != width:
        raise ConfigError(
            f"tta=flip_rot rotates slices by 90 degrees, which needs square slices; these are "
            f"{height}x{width}: use tta=flip or tta=none"
        )


def check_tta_for(mode: str, contract: Mapping[str, Any]) -> None:
    """Refuse ``mode`` before any data is read, from the model's input size (the contract's
    ``image_size``: the crop's square with a crop). Contracts rebuilt from an old run's config
    have no size; there :func:`views` checks each batch."""
    size = contract.get("image_size")
    if size:
        check_tta(mode, *(int(s) for s in size))
    else:
        check_tta(mode, 1, 1)  # the mode alone


def n_views(mode: str) -> int:
    """How many views ``mode`` averages."""
    return len(_VIEWS[mode])


def views(images: Any, mode: str) -> list[Any]:
    """The views of a batch ``[B, C, H, W]`` (tensor or array), the unchanged batch first."""
    check_tta(mode, images.shape[-2], images.shape[-1])
    return [_view(images, flip, turns) for flip, turns in _VIEWS[mode]]


def _view(images: Any, flip: bool, turns: int) -> Any:
    if hasattr(images, "rot90"):  # a torch tensor
        out = images.flip(-1) if flip else images
        return out.rot90(turns, dims=(-2, -1)) if turns else out
    import numpy as np

    out = np.flip(images, axis=-1) if flip else images
    out = np.rot90(out, turns, axes=(-2, -1)) if turns else out
    return np.ascontiguousarray(out)

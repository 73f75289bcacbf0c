"""NIfTI header checks (cheap, before any long work) and voxel reading without float64 copies."""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from gliograde.data.errors import DataError

_AFFINE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class VolumeHeader:
    """What a NIfTI header says about one volume, checked for readability and completeness."""

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    dtype: np.dtype


def read_header(path: Path, patient: str, reorient: str | None = None) -> VolumeHeader:
    """Open ``path``'s header and check it describes one complete 3D volume.

    Catches truncated files here (from the file size, or the gzip trailer's length) so that
    no long decoding starts on a file that cannot be read to the end. ``shape`` is the shape
    after reorientation to ``reorient`` axis codes, as ``read_voxels`` will return it.
    """
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        dtype = np.dtype(img.get_data_dtype())
        offset = int(img.dataobj.offset)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise DataError(f"unreadable NIfTI ({_short(exc)})", patient, path) from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(f"volume is {len(shape)}D with shape {shape}, expected 3D", patient, path)
    if min(shape) < 1:
        raise DataError(f"volume has an empty axis, shape {shape}", patient, path)
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if _is_truncated(path, expected):
        raise DataError(
            f"truncated NIfTI: shorter than the {expected} bytes its header promises", patient, path
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    if reorient:
        shape = tuple(_reoriented(np.broadcast_to(np.zeros((), bool), shape), affine, reorient).shape)
    return VolumeHeader(path, shape, affine, dtype)


def _reoriented(data: np.ndarray, affine: np.ndarray, codes: str) -> np.ndarray:
    """``data`` flipped and permuted (views only) from the affine's axes to ``codes``."""
    orientations = nib.orientations
    transform = orientations.ornt_transform(
        orientations.io_orientation(affine), orientations.axcodes2ornt(tuple(codes))
    )
    return orientations.apply_orientation(data, transform)


def _is_truncated(path: Path, expected: int) -> bool:
    """Compare the stream length with the header's promise, cheaply where possible.

    A gzip trailer stores the uncompressed length (modulo 2**32); a cut-off file ends in
    compressed bytes instead, which almost never equal the promised length. Only on a
    mismatch (a damaged file, or a multi-member gzip whose trailer covers its last member
    alone) do we stream the whole file to be sure.
    """
    size = path.stat().st_size
    if path.suffix != ".gz":
        return size < expected
    if size < 18:
        return True
    with open(path, "rb") as fh:
        fh.seek(-4, 2)
        (stored,) = struct.unpack("<I", fh.read(4))
    if stored == expected % 2**32:
        return False
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 22):
                total += len(chunk)
    except (OSError, EOFError, zlib.error):
        return True
    return total < expected


def check_same_grid(headers: dict[str, VolumeHeader], patient: str) -> tuple[int, int, int]:
    """All of a patient's volumes (modalities and mask) must share shape and affine."""
    items = list(headers.items())
    ref_name, ref = items[0]
    for _, header in items[1:]:
        if header.shape != ref.shape:
            raise DataError(
                f"shape {header.shape} differs from {ref_name}'s {ref.shape}", patient, header.path
            )
        if not np.allclose(header.affine, ref.affine, atol=_AFFINE_TOLERANCE):
            raise DataError(
                f"affine differs from {ref_name}'s (volumes are not on one voxel grid)",
                patient,
                header.path,
            )
    return ref.shape


def read_voxels(path: Path, patient: str, reorient: str | None = None) -> np.ndarray:
    """Voxels of a 3D volume in the file's own dtype (float32 if the header scales them).

    The array is in nibabel's (x, y, z) order; for an uncompressed file it is a memory map.
    ``reorient`` (e.g. "RAS") flips/permutes axes to those axis codes.
    """
    try:
        img = nib.load(str(path))
        proxy = img.dataobj
        data = np.asarray(proxy.get_unscaled())
        if float(proxy.slope) != 1.0 or float(proxy.inter) != 0.0:
            data = data.astype(np.float32) * np.float32(proxy.slope) + np.float32(proxy.inter)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"unreadable NIfTI voxels ({_short(exc)})", patient, path) from None
    if data.ndim == 4:
        data = data[..., 0]
    if reorient:
        data = _reoriented(data, img.affine, reorient)
    return data


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) < 160 else text[:157] + "..."

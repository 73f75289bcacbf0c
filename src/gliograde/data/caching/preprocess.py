"""Per-patient preprocessing: validate voxels, z-score each modality inside the brain, measure
per-slice brain and tumour areas for slice selection, and fingerprint each modality's voxels
(their values, and their order: see :func:`order_fingerprint`). Writes into a cache slot.

Each modality is z-scored over its own nonzero voxels, so its normalised values do not depend
on which other modalities are processed with it. The brain (the voxels where any modality is
nonzero) does: its per-slice area is therefore counted per *code*, the set of modalities
nonzero at a voxel (bit ``i`` for ``MODALITIES[i]``), and :func:`brain_area` gives the area of
the brain of any subset of the modalities processed, exactly as processing that subset alone
would."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from gliograde.data.batches.crops import slice_boxes
from gliograde.data.errors import DataError
from gliograde.data.discovery.nifti import read_voxels
from gliograde.data.discovery.specs import MODALITIES, PLANES

# Axes of a (z, y, x) array summed to get one number per slice of each plane.
_SUM_AXES = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}
# The axis of a (z, y, x) array that indexes the slices of each plane.
_SLICE_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
CODES = 1 << len(MODALITIES)
"""How many modality codes (sets of nonzero modalities) a voxel can have."""


def stored_modalities(modalities: Iterable[str]) -> tuple[str, ...]:
    """``modalities`` in MODALITIES order: the channel order of a cache or streamed volume."""
    wanted = set(modalities)
    return tuple(m for m in MODALITIES if m in wanted)


def brain_area(codes: np.ndarray, modalities: Iterable[str]) -> np.ndarray:
    """Per-slice brain area (voxels where any of ``modalities`` is nonzero) from code counts.

    ``codes`` is ``[..., slice, CODES]`` as :attr:`SliceAreas.brain_codes` holds them; the
    modalities must be among those counted (a code never set counts zero voxels).
    """
    bits = sum(1 << MODALITIES.index(m) for m in modalities)
    inside = [code for code in range(CODES) if code & bits]
    return codes[..., inside].sum(axis=-1, dtype=np.int32)


@dataclass
class SliceAreas:
    """Per-slice voxel counts of one patient, for each plane (index = slice number)."""

    brain: dict[str, np.ndarray]  # nonzero in any modality processed
    tumour: dict[str, np.ndarray] | None
    fingerprints: dict[str, str] = field(default_factory=dict)  # modality -> voxels' sha256
    order_fingerprints: dict[str, str] = field(default_factory=dict)  # modality -> their order's sha256
    brain_codes: dict[str, np.ndarray] = field(default_factory=dict)  # plane -> [slice, CODES]
    # plane -> per-slice bounding boxes of each modality's brain [n_slices, modality, 4] (see
    # data.crops; modalities in stored order), so a crop can use the brain of any subset
    brain_boxes: dict[str, np.ndarray] = field(default_factory=dict)
    tumour_boxes: dict[str, np.ndarray] | None = None
    box: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None  # brain's (z, y, x) start, stop


def preprocess_patient(
    patient: str,
    modalities: Mapping[str, Path],
    mask: Path | None,
    out: np.ndarray,
    mask_labels: tuple[int, ...],
    clip_percentiles: tuple[float, float] | None = None,
    reorient: str | None = None,
    out_is_zero: bool = False,
) -> SliceAreas:
    """Normalise ``patient``'s ``modalities`` into ``out`` (shape ``[z, modality, y, x]``, the
    modalities in MODALITIES order: see :func:`stored_modalities`).

    ``out_is_zero=True`` promises ``out`` holds zeros (a fresh buffer), so only brain voxels
    are written and background pages are never touched. The result's ``box`` bounds the
    voxels that are nonzero in any modality.

    Each modality's :func:`voxel_fingerprint` and :func:`order_fingerprint` are taken from
    the voxels as decoded, before reorientation, so they do not depend on the preprocessing
    settings.

    Raises DataError naming the patient and file for NaN/infinite or all-zero volumes, for
    two modalities with the same images (by either fingerprint), and for mask labels outside
    ``mask_labels``.
    """
    stored = stored_modalities(modalities)
    if out.shape[1] != len(stored):
        raise ValueError(f"out has {out.shape[1]} channels for the {len(stored)} modalities {stored}")
    code = np.zeros(out.shape[:1] + out.shape[2:], dtype=np.uint8)
    fingerprints: dict[str, str] = {}
    orders: dict[str, str] = {}
    boxes: dict[str, list[np.ndarray]] = {plane: [] for plane in PLANES}
    for channel, name in enumerate(stored):
        path = modalities[name]
        decoded = read_voxels(path, patient)
        fingerprints[name] = voxel_fingerprint(decoded)
        orders[name] = order_fingerprint(decoded)
        volume = _reoriented(decoded, path, reorient).T  # (z, y, x), C-contiguous for .nii
        nonzero = normalise_into(volume, out[:, channel], patient, path, clip_percentiles, out_is_zero)
        _refuse_same_images(patient, name, path, fingerprints, orders)
        code |= nonzero.view(np.uint8) << np.uint8(MODALITIES.index(name))
        for plane in PLANES:
            boxes[plane].append(slice_boxes(nonzero, plane))
    codes = code_counts(code)
    areas = {plane: brain_area(codes[plane], stored) for plane in PLANES}
    brain_boxes = {plane: np.stack(boxes[plane], axis=1) for plane in PLANES}
    tumour = tumour_boxes = None
    if mask is not None:
        seg = read_voxels(mask, patient, reorient).T
        check_mask_labels(seg, mask_labels, patient, mask)
        in_tumour = seg != 0
        tumour = {p: in_tumour.sum(axis=_SUM_AXES[p], dtype=np.int32) for p in PLANES}
        tumour_boxes = {plane: slice_boxes(in_tumour, plane) for plane in PLANES}
    return SliceAreas(
        areas, tumour, fingerprints, orders, codes, brain_boxes, tumour_boxes, _box_from_areas(areas)
    )


def _refuse_same_images(
    patient: str, name: str, path: Path, fingerprints: Mapping[str, str], orders: Mapping[str, str]
) -> None:
    """Modality ``name`` must not repeat an earlier modality's images (a copied or rescaled file
    given for two modalities would feed the model one image twice)."""
    for other in fingerprints:
        if other != name and (fingerprints[other] == fingerprints[name] or orders[other] == orders[name]):
            raise DataError(
                f"the {name} volume holds the same images as the {other} volume: each modality needs its "
                "own image",
                patient,
                path,
            )


def _box_from_areas(areas: dict[str, np.ndarray]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The brain's (z, y, x) bounding box, from its per-slice areas in each plane."""
    bounds = [np.flatnonzero(areas[plane]) for plane in ("axial", "coronal", "sagittal")]
    return tuple(int(b[0]) for b in bounds), tuple(int(b[-1]) + 1 for b in bounds)


def code_counts(code: np.ndarray) -> dict[str, np.ndarray]:
    """Per plane, ``[slice, CODES]``: how many voxels of each slice carry each code of the
    ``(z, y, x)`` volume ``code``.

    Only the codes present are counted (a skull-stripped brain has few: usually every modality
    or none), each with one boolean mask reduced along the axes; code 0 is what is left.
    """
    present = np.flatnonzero(np.bincount(code.ravel(), minlength=CODES))
    counts = {plane: np.zeros((code.shape[_SLICE_AXIS[plane]], CODES), dtype=np.int32) for plane in PLANES}
    for value in present[present > 0]:
        inside = code == value
        per_zy = inside.sum(axis=2, dtype=np.int32)
        counts["axial"][:, value] = per_zy.sum(axis=1)
        counts["coronal"][:, value] = per_zy.sum(axis=0)
        counts["sagittal"][:, value] = inside.sum(axis=(0, 1), dtype=np.int32)
    for plane in PLANES:
        per_slice = code.size // code.shape[_SLICE_AXIS[plane]]
        counts[plane][:, 0] = per_slice - counts[plane][:, 1:].sum(axis=1)
    return counts


# Slices of the fingerprint loop: their converted copy (a few MB) stays small.
_FINGERPRINT_VOXELS = 1 << 20
_INT16 = np.iinfo(np.int16)
# Integer volumes whose values span less than this are ranked by counting (a table this long).
_COUNTED_RANGE = 1 << 20


def voxel_fingerprint(voxels: np.ndarray) -> str:
    """sha256 hex digest of a decoded 3D volume's values and (x, y, z) shape.

    The voxels are hashed with x varying fastest (the NIfTI storage order) as little-endian
    int16 when every value is an integer int16 holds (most MR volumes: half the bytes of
    float32), else as little-endian float32. So the digest depends on the values alone,
    not on the file's name, compression (.nii or .nii.gz), integer type or scaling.
    """
    zyx = voxels.T  # C order of (z, y, x) is x-fastest order of (x, y, z); no copy for .nii
    canonical = "<i2" if _fits_int16(zyx) else "<f4"
    shape = "x".join(str(n) for n in voxels.shape)
    digest = hashlib.sha256(f"{shape};{np.dtype(canonical).name}-le;".encode())
    for block in _blocks(zyx):
        digest.update(memoryview(np.ascontiguousarray(block, dtype=canonical)).cast("B"))
    return digest.hexdigest()


def order_fingerprint(voxels: np.ndarray) -> str:
    """sha256 hex digest of a decoded 3D volume's (x, y, z) shape and the order of its values:
    each voxel's rank among the volume's distinct values, x varying fastest.

    Any strictly increasing change of the intensities that keeps zero at zero, such as a
    rescaling by a positive factor, leaves it as it is: z-scoring (what the model sees) undoes
    the rescaling, and rounding the z-scored values (to the cache's float16) would not, at the
    few voxels that fall on a rounding boundary. The file's type and compression do not
    change it either.
    """
    zyx = voxels.T
    shape = "x".join(str(n) for n in voxels.shape)
    nonzero = zyx != 0
    box = _bounding_box(nonzero) if nonzero.any() else (slice(0, 0),) * 3
    del nonzero
    inside = zyx[box]  # everything around it is zero, whose rank the box's own zeros carry
    bounds = ",".join(f"{b.start}:{b.stop}" for b in box)
    integral = inside.dtype.kind in "iu" or _fits_int16(inside)
    low, high = (int(inside.min()), int(inside.max())) if integral and inside.size else (0, 0)
    if integral and high - low < _COUNTED_RANGE:  # most MR volumes: count the values, never sort
        direct = inside.dtype in (np.uint8, np.uint16) or inside.dtype == np.int16 and low >= 0
        present = np.zeros(high + 1 if direct else high - low + 1, dtype=bool)
        for block in _blocks(inside):
            present |= np.bincount(_codes(block, low, direct), minlength=len(present)) > 0
        count = int(np.count_nonzero(present))
        rank_of = (np.cumsum(present) - 1).astype(_rank_dtype(count))
        ranks = (np.take(rank_of, _codes(block, low, direct)) for block in _blocks(inside))
    else:
        values = np.unique(inside)
        count = len(values)
        ranks = (np.searchsorted(values, block).astype(_rank_dtype(count)) for block in _blocks(inside))
    dtype = _rank_dtype(count)
    digest = hashlib.sha256(f"{shape};order;{bounds};{count};{dtype.name}-le;".encode())
    for block in ranks:
        digest.update(memoryview(np.ascontiguousarray(block, dtype=dtype.newbyteorder("<"))).cast("B"))
    return digest.hexdigest()


def _codes(block: np.ndarray, low: int, direct: bool) -> np.ndarray:
    """A block of an integral volume, flat, as non-negative ints that keep its values' order:
    the values themselves where they are (``direct``) unsigned 8- or 16-bit ones, else
    ``value - low`` as int32 (values that span under 2**20)."""
    if direct:
        unsigned = np.uint16 if block.dtype.itemsize == 2 else np.uint8
        return np.ascontiguousarray(block).reshape(-1).view(unsigned)
    return np.subtract(block, low, dtype=np.int32, casting="unsafe").reshape(-1)


def _rank_dtype(count: int) -> np.dtype:
    """The smallest unsigned type that holds ranks ``0..count - 1``."""
    return np.dtype(np.uint16 if count <= 1 << 16 else np.uint32)


def _blocks(zyx: np.ndarray):
    if not len(zyx):
        return
    step = max(1, _FINGERPRINT_VOXELS // max(1, zyx[0].size))
    for start in range(0, len(zyx), step):
        yield zyx[start : start + step]


def _fits_int16(zyx: np.ndarray) -> bool:
    """Whether every value is an integer within int16's range (from the dtype where it can)."""
    kind, size = zyx.dtype.kind, zyx.dtype.itemsize
    if kind == "i" and size <= 2 or kind == "u" and size == 1:
        return True
    if kind not in "iuf":
        return False
    for block in _blocks(zyx):
        if block.size and (block.min() < _INT16.min or block.max() > _INT16.max):
            return False
        if kind == "f" and not np.array_equal(block, np.rint(block)):
            return False
    return True


def _reoriented(data: np.ndarray, path: Path, codes: str | None) -> np.ndarray:
    """``data`` flipped and permuted (views only) from its file's axes to ``codes``."""
    if not codes:
        return data
    orientations = nib.orientations
    affine = nib.load(str(path)).affine  # the header only; the voxels are already decoded
    transform = orientations.ornt_transform(
        orientations.io_orientation(affine), orientations.axcodes2ornt(tuple(codes))
    )
    return orientations.apply_orientation(data, transform)


# Voxels per block of the normalise loop: its float32 temporary (~2 MB) stays in the CPU cache.
_BLOCK_VOXELS = 1 << 19


def normalise_into(
    volume: np.ndarray,
    out: np.ndarray,
    patient: str,
    path: Path,
    clip_percentiles: tuple[float, float] | None,
    out_is_zero: bool = False,
) -> np.ndarray:
    """Z-score ``volume`` over its nonzero (brain) voxels into ``out``; background stays 0.

    Statistics come from the brain voxels alone; the scaled values are computed in float32
    blocks of a few slices inside the brain's bounding box and written to the brain voxels
    only, so no volume-sized float32 temporary is made (the same values as scaling the whole
    volume in float32). ``out_is_zero=True`` skips zeroing ``out`` first. Returns the nonzero
    mask.
    """
    nonzero = volume != 0
    values = volume[nonzero]
    if values.size == 0:
        raise DataError("all-zero volume", patient, path)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise DataError(f"{bad} NaN or infinite voxels", patient, path)
    low = high = None
    if clip_percentiles is not None:
        low, high = np.percentile(values, clip_percentiles)
        values = np.clip(values, low, high)
    mean = np.float32(values.mean(dtype=np.float64))
    scale = np.float32(1.0 / (float(values.std(dtype=np.float64)) or 1.0))
    del values
    if not out_is_zero:
        out[...] = 0
    box = _bounding_box(nonzero)
    source, inside, target = volume[box], nonzero[box], out[box]
    step = max(1, _BLOCK_VOXELS // max(1, source[0].size))
    block = np.empty((min(step, len(source)),) + source.shape[1:], dtype=np.float32)
    for start in range(0, len(source), step):
        stop = min(start + step, len(source))
        scaled = block[: stop - start]
        np.copyto(scaled, source[start:stop], casting="unsafe")
        if low is not None:
            np.clip(scaled, low, high, out=scaled)
        scaled -= mean
        scaled *= scale
        np.copyto(target[start:stop], scaled, casting="unsafe", where=inside[start:stop])
    return nonzero


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest (z, y, x) box holding every True voxel of a non-empty 3D mask."""
    z = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
    plane = mask[z[0] : z[-1] + 1].any(axis=0)
    y = np.flatnonzero(plane.any(axis=1))
    x = np.flatnonzero(plane.any(axis=0))
    return slice(z[0], z[-1] + 1), slice(y[0], y[-1] + 1), slice(x[0], x[-1] + 1)


def check_mask_labels(seg: np.ndarray, allowed: tuple[int, ...], patient: str, path: Path) -> None:
    """Every mask voxel must carry one of the layout's labels."""
    if seg.dtype.kind in "iu":
        # One vectorised comparison per allowed label instead of a histogram of the volume.
        if sum(int(np.count_nonzero(seg == label)) for label in set(allowed)) == seg.size:
            return
    elif seg.dtype.kind == "f":
        if not np.isfinite(seg).all() or not np.array_equal(seg, np.round(seg)):
            raise DataError("mask has non-integer values", patient, path)
    low, high = seg.min(), seg.max()
    if low < 0 or high > 255:
        raise DataError(
            f"mask labels {sorted({int(low), int(high)} - set(allowed))} outside {list(allowed)}",
            patient,
            path,
        )
    present = np.flatnonzero(np.bincount(seg.astype(np.uint8, copy=False).ravel(), minlength=256))
    unexpected = sorted(set(int(v) for v in present) - set(allowed))
    if unexpected:
        raise DataError(f"mask labels {unexpected} outside {list(allowed)}", patient, path)

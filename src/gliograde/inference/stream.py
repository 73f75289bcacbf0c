"""One patient from NIfTI to the model's input slices, exactly as the cache would feed them:
the same header checks, ``preprocess_patient`` into float16 (the cache's rounding),
``select_slices`` with the contract's rule, and the contract's neighbouring slices and crop
(the dataset's own ``gliograde.data.batches.crops`` arithmetic). Nothing is written but resampled temporaries."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from gliograde.contract.input_contract import NO_CROP, grid_mismatch, grid_of
from gliograde.data.batches.crops import (
    context_slices,
    crop,
    crop_centres,
    normal_length,
    stack_context,
)
from gliograde.data.errors import DataError
from gliograde.data.discovery.nifti import check_same_grid, read_header
from gliograde.data.caching.preprocess import SliceAreas, preprocess_patient, stored_modalities
from gliograde.data.batches.slices import select_slices
from gliograde.data.discovery.specs import SliceSpec
from gliograde.inference.inputs import PatientFiles
from gliograde.contract.mask_free import needs_mask, slice_rule

CACHE_DTYPE = np.float16

# A patient's tumour where no mask file gives one (e.g. a segmenter's predicted mask), from its
# id, its preprocessed volume ``[z, modality, y, x]`` (float16, ``stored_modalities`` order) and
# its areas: per plane, the tumour voxels of each slice and the tumour's box in each slice (as
# ``SliceAreas.tumour`` / ``tumour_boxes``), or None when it has none to give.
TumourSource = Callable[
    [str, np.ndarray, SliceAreas], "tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None"
]


@dataclass
class PatientSlices:
    """The selected slices of one patient, ``[N, C, H, W]`` in the contract's channel order
    (``C`` = modalities x (2 context + 1), ``H`` = ``W`` = the crop's size with a crop)."""

    patient_id: str
    images: np.ndarray  # float16, as the cache holds them
    slice_index: np.ndarray
    slice_rule: str
    resampled: bool
    fingerprints: dict[str, str]  # modality -> sha256 of its decoded voxels (see data.identity)
    # modality -> sha256 of the order of its voxel values (see data.identity)
    order_fingerprints: dict[str, str] = field(default_factory=dict)
    centres: np.ndarray | None = None  # [N, 2] crop centres of the slices, None without a crop
    tumour_voxels: int | None = None  # the mask's (given or predicted) whole-tumour voxels


def load_patient(
    files: PatientFiles,
    contract: Mapping[str, Any],
    resample: bool,
    mask_free: str | None = None,
    tumour_source: TumourSource | None = None,
) -> PatientSlices:
    """Check, (optionally) resample, normalise and slice one patient as the contract says.

    A patient without a mask file gets its tumour from ``tumour_source`` if given; otherwise,
    where the contract needs a mask, the slice strategy ``mask_free`` (see ``gliograde.contract.mask_free``).
    """
    reorient = contract["preprocess"]["reorient"]
    patient = files.patient_id
    missing = [m for m in contract["modalities"] if m not in files.modalities]
    if missing:
        raise DataError(f"no {missing[0]} volume, which the model needs", patient)
    # Only the model's modalities: the brain area, hence the slices chosen, depends on the set.
    paths: dict[str, Path] = {m: files.modalities[m] for m in stored_modalities(contract["modalities"])}
    if files.mask is not None:
        paths["mask"] = files.mask
    headers = {name: read_header(path, patient, reorient) for name, path in paths.items()}
    wrong = {}
    for name, path in paths.items():
        reason = grid_mismatch(contract, grid_of(headers[name].affine, _raw_shape(path), reorient))
        if reason:
            wrong[name] = reason
    if wrong and not resample:
        name, reason = next(iter(wrong.items()))
        raise DataError(
            f"{reason} (the model's input grid); pass resample=true to resample", patient, paths[name]
        )
    if not wrong:
        check_same_grid(headers, patient)
        return _slices(patient, paths, contract, False, mask_free, tumour_source)
    with tempfile.TemporaryDirectory(prefix="gliograde-resample-") as tmp:
        moved = {
            name: _resample(path, Path(tmp) / f"{name}.nii", contract, order=0 if name == "mask" else 1)
            for name, path in paths.items()
        }
        return _slices(patient, moved, contract, True, mask_free, tumour_source)


def _slices(
    patient: str,
    paths: Mapping[str, Path],
    contract: Mapping[str, Any],
    resampled: bool,
    mask_free: str | None = None,
    tumour_source: TumourSource | None = None,
) -> PatientSlices:
    reorient = contract["preprocess"]["reorient"]
    stored = stored_modalities(contract["modalities"])
    x, y, z = read_header(paths[stored[0]], patient, reorient).shape
    volume = np.zeros((z, len(stored), y, x), dtype=CACHE_DTYPE)
    clip = contract["preprocess"]["clip_percentiles"]
    areas = preprocess_patient(
        patient,
        {m: paths[m] for m in stored},
        paths.get("mask"),
        volume,
        tuple(contract["preprocess"]["mask_labels"]),
        clip_percentiles=None if clip is None else tuple(clip),
        reorient=reorient,
        out_is_zero=True,
    )
    predicted = False
    if areas.tumour is None and tumour_source is not None:  # the seam for a predicted mask
        supplied = tumour_source(patient, volume, areas)
        if supplied is not None:
            areas = replace(areas, tumour=supplied[0], tumour_boxes=supplied[1])
            predicted = True
    spec = SliceSpec(**contract["slices"])
    plane = spec.plane
    tumour = None if areas.tumour is None else areas.tumour[plane]
    has_tumour = tumour is not None and bool(tumour.any())
    rule, strategy = slice_rule(spec.strategy, needs_mask(contract), has_tumour, mask_free, predicted)
    spec = replace(spec, strategy=strategy)
    chosen = select_slices(patient, areas.brain[plane], tumour, spec)
    if chosen.size == 0:
        raise DataError(f"no slice selected by the slice rule {rule}", patient, paths[stored[0]])
    channels = [stored.index(m) for m in contract["modalities"]]
    context = int(contract.get("context", 0))
    depth = normal_length((x, y, z), plane)
    read = context_slices(chosen, context, depth).ravel()  # the cache dataset's one read
    images = stack_context(_cut(volume, read, channels, plane), context)
    crop_spec = contract.get("crop") or NO_CROP
    if crop_spec["mode"] != "none":
        tumour_boxes = None if areas.tumour_boxes is None else areas.tumour_boxes[plane]
        centres, _ = crop_centres(crop_spec["mode"], chosen, tumour_boxes, areas.brain_boxes[plane], channels)
        images = crop(images, centres, int(crop_spec["size"]))
    else:
        centres = None
    voxels = None if areas.tumour is None else int(areas.tumour["axial"].sum())
    return PatientSlices(
        patient, images, chosen, rule, resampled, areas.fingerprints, areas.order_fingerprints, centres, voxels
    )


def _cut(volume: np.ndarray, chosen: np.ndarray, channels: list[int], plane: str) -> np.ndarray:
    """Slices of a ``[z, modality, y, x]`` volume, as ``SliceDataset`` reads them from the cache."""
    if plane == "axial":
        return np.ascontiguousarray(volume[chosen][:, channels])
    if plane == "coronal":  # fixed y -> [channel, z, x]
        return np.ascontiguousarray(volume[:, channels][:, :, chosen, :].transpose(2, 1, 0, 3))
    return np.ascontiguousarray(volume[:, channels][..., chosen].transpose(3, 1, 0, 2))  # sagittal


def _raw_shape(path: Path) -> tuple[int, ...]:
    return tuple(int(s) for s in nib.load(str(path)).shape[:3])


def model_grid_affine(image: nib.Nifti1Image, contract: Mapping[str, Any]) -> np.ndarray:
    """The affine of the model's grid (its shape, spacing and orientation) centred on ``image``:
    where ``resample=true`` puts a scan whose grid is not the model's."""
    grid = contract["grid"]
    shape = np.array(grid["shape"])
    ornt = nib.orientations.axcodes2ornt(tuple(grid["orientation"]))
    affine = np.eye(4)
    for axis, (world, sign) in enumerate(ornt):
        affine[:3, axis] = 0
        affine[int(world), axis] = sign * grid["spacing"][axis]
    centre = image.affine @ np.append((np.array(image.shape[:3]) - 1) / 2, 1)
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ ((shape - 1) / 2)
    return affine


def _resample(path: Path, target: Path, contract: Mapping[str, Any], order: int) -> Path:
    """``path`` resampled onto the model's grid (centred on the volume), written to ``target``."""
    from nibabel.processing import resample_from_to

    image = nib.load(str(path))
    if len(image.shape) == 4:
        image = image.slicer[..., 0]
    shape = np.array(contract["grid"]["shape"])
    affine = model_grid_affine(image, contract)
    moved = resample_from_to(
        image, (tuple(int(s) for s in shape), affine), order=order, mode="constant", cval=0
    )
    data = np.asarray(moved.dataobj)
    data = np.rint(data).astype(np.int16) if order == 0 else data.astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(target))
    return target

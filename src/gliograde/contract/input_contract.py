"""The input contract: what a model was trained on, recorded with it and enforced where it is used.

A contract is a plain dict (it travels in checkpoints, config.yaml and model cards):

- ``modalities``: names in channel order; ``classes``: names in output order;
- ``plane`` and ``slices`` (the slice rule, as ``data.slices``), and ``mask_free_strategy``;
- ``crop`` (``mode`` and ``size``, as ``data.crop``) and ``context`` (neighbouring slices per
  side, as ``data.context``): a model sees ``len(modalities) * (2 * context + 1)`` channels;
- ``image_size`` ``[H, W]`` of the model's input (the crop's square with a crop), and ``grid``:
  the volume shape (after reorientation),
  voxel spacing and orientation the model saw (``None`` for runs recorded from config only);
- ``preprocess``: normalisation, clipping, reorientation, mask labels and the cache dtype;
- ``naming``: the training cohort's file templates (defaults for finding a patient's files);
- ``version``: the gliograde version that trained the model;
- ``kind``: ``classifier`` (grades; a contract without ``kind`` is one) or ``segmenter``
  (whole-tumour masks, ``task=segment``), whose ``target`` names what it segments (``name``,
  and the mask ``labels`` it covers) and whose ``classes`` are ``background`` and ``tumour``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from omegaconf import open_dict

from gliograde import __version__
from gliograde.errors import ConfigError

log = logging.getLogger(__name__)

NORMALISATION = "zscore_nonzero"  # per modality, over the volume's nonzero (brain) voxels
CACHE_DTYPE = "float16"
MASK_FREE_STRATEGY = "brain"
_SPACING_TOLERANCE = 1e-3
NO_CROP = {"mode": "none", "size": 128}  # what contracts recorded before crops existed


KINDS = {"classifier": "classify", "segmenter": "segment"}  # contract kind -> training task
SEGMENTER_CLASSES = ["background", "tumour"]


class ContractError(ConfigError):
    """A setting contradicts what the model was trained on."""


def kind_of(contract: Mapping[str, Any]) -> str:
    """``classifier`` or ``segmenter``; contracts recorded before segmenters are classifiers."""
    return str(contract.get("kind") or "classifier")


def refuse_kind(contract: Mapping[str, Any], expected: str, source: str) -> None:
    """Raise ContractError (one line naming ``source``) unless the contract's model is ``expected``."""
    kind = kind_of(contract)
    if kind == expected:
        return
    if kind == "segmenter":
        how = f"pass it as segmenter={source if _named(source) else 'RUN'} and a classifier as ckpt="
    else:
        how = "pass a classifier run as ckpt= and a segmenter run (task=segment) as segmenter="
    raise ContractError(f"{source} is a {kind} run (task={KINDS.get(kind, kind)}), not a {expected}; {how}")


def _named(source: str) -> bool:
    """Whether ``source`` is a path the user gave, not the stand-in ``UNNAMED``."""
    return source != UNNAMED


UNNAMED = "the checkpoint"


def _slices_dict(spec: Any) -> dict[str, Any]:
    keys = ("strategy", "plane", "k", "min_area", "min_brain_fraction", "n", "z_min", "z_max")
    return {key: _plain(getattr(spec, key) if not isinstance(spec, Mapping) else spec[key]) for key in keys}


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (tuple, list)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def grid_of(affine: np.ndarray, shape: tuple[int, ...], reorient: str | None) -> dict[str, Any]:
    """Shape, voxel spacing (mm) and orientation codes of a volume as the model sees it.

    With ``reorient`` the axes are flipped/permuted to those codes first, as preprocessing does.
    """
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    codes = "".join(nib.orientations.aff2axcodes(affine))
    shape = tuple(int(s) for s in shape[:3])
    if reorient:
        # axis i of the file ends up at position ornt[i, 0] after reorientation
        ornt = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(reorient))
        )
        order = [0, 0, 0]
        for axis, (target, _) in enumerate(ornt):
            order[int(target)] = axis
        spacing = spacing[order]
        shape = tuple(shape[a] for a in order)
        codes = reorient
    return {"shape": list(shape), "spacing": [round(float(s), 6) for s in spacing], "orientation": codes}


def image_size(volume_shape: list[int] | tuple[int, ...], plane: str) -> list[int]:
    """``[H, W]`` of one slice of a ``(x, y, z)`` volume in ``plane``, as the dataset reads it."""
    x, y, z = (int(s) for s in volume_shape)
    return {"axial": [y, x], "coronal": [z, x], "sagittal": [z, y]}[plane]


def from_datamodule(datamodule: Any, kind: str = "classifier") -> dict[str, Any]:
    """The contract of a set-up ``GliomaDataModule`` (its cohort's grid read from one header)
    for a model of ``kind`` (``classifier`` or ``segmenter``)."""
    from gliograde.data.discovery.nifti import read_header

    reorient = datamodule.preprocess_spec.reorient
    grid = None
    records = [r for r in datamodule.cohort.patients if r.patient_id in set(datamodule.cached.patient_ids)]
    if records:
        first = next(iter(records[0].modalities.values()))
        header = read_header(first, records[0].patient_id)  # file order
        grid = grid_of(header.affine, header.shape, reorient)
    return _assemble(
        modalities=datamodule.modalities,
        classes=datamodule.classes,
        slices=datamodule.slice_spec,
        crop=datamodule.crop_spec,
        context=datamodule.context,
        preprocess=datamodule.preprocess_spec,
        mask_labels=datamodule.layout.mask_labels,
        naming={
            "modality_files": dict(datamodule.layout.modality_files),
            "mask_file": datamodule.layout.mask_file,
        },
        grid=grid,
        kind=kind,
    )


def from_config(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The contract of a run that predates contracts, from its saved ``data`` config.

    The grid (shape, spacing, orientation) was not recorded then, so it stays ``None``.
    """
    from gliograde.data.discovery.specs import CropSpec, LayoutSpec, PreprocessSpec, SliceSpec, from_mapping

    data = _plain(dict(data_cfg))
    layout = from_mapping(LayoutSpec, data.get("layout"), "data.layout")
    return _assemble(
        modalities=data["modalities"],
        classes=data["labels"]["classes"],
        slices=from_mapping(SliceSpec, data.get("slices"), "data.slices"),
        crop=from_mapping(CropSpec, data.get("crop"), "data.crop"),
        context=int(data.get("context") or 0),
        preprocess=from_mapping(PreprocessSpec, data.get("preprocess"), "data.preprocess"),
        mask_labels=layout.mask_labels,
        naming={"modality_files": dict(layout.modality_files), "mask_file": layout.mask_file},
        grid=None,
        version=None,
    )


def _assemble(
    modalities,
    classes,
    slices,
    crop,
    context,
    preprocess,
    mask_labels,
    naming,
    grid,
    version=__version__,
    kind="classifier",
):
    slices = _slices_dict(slices)
    crop = {"mode": str(crop.mode), "size": int(crop.size)}
    size = image_size(grid["shape"], slices["plane"]) if grid is not None else None
    if crop["mode"] != "none":
        size = [crop["size"], crop["size"]]
    return {
        "modalities": [str(m) for m in modalities],
        "classes": [str(c) for c in classes],
        "plane": slices["plane"],
        "slices": slices,
        "mask_free_strategy": MASK_FREE_STRATEGY,
        "crop": crop,
        "context": int(context),
        "image_size": size,
        "grid": grid,
        "preprocess": {
            "normalisation": NORMALISATION,
            "clip_percentiles": _plain(preprocess.clip_percentiles),
            "reorient": preprocess.reorient,
            "mask_labels": _plain(mask_labels),
            "cache_dtype": CACHE_DTYPE,
        },
        "naming": _plain(naming),
        "version": version,
        "kind": kind,
        **(_segmenter_target(mask_labels) if kind == "segmenter" else {}),
    }


def _segmenter_target(mask_labels: Any) -> dict[str, Any]:
    labels = sorted(int(v) for v in _plain(mask_labels) if int(v) != 0)
    return {"classes": list(SEGMENTER_CLASSES), "target": {"name": "whole tumour", "labels": labels}}


def check_model(contract: Mapping[str, Any], in_channels: int, class_names: list[str]) -> None:
    """The contract must describe the network it came with."""
    channels = len(contract["modalities"]) * (2 * int(contract.get("context", 0)) + 1)
    if channels != in_channels or list(contract["classes"]) != list(class_names):
        raise ContractError(
            f"the input contract (modalities {contract['modalities']}, context {contract.get('context', 0)}, "
            f"classes {contract['classes']}) does "
            f"not match the network ({in_channels} input channels, classes {list(class_names)})"
        )


def enforce(contract: Mapping[str, Any], data_cfg: Any, given: set[str]) -> list[str]:
    """Make ``data_cfg`` (a mutable DictConfig) feed the model as its contract says.

    ``given`` holds the ``data.*`` keys the user typed. A typed value that changes what the
    model sees is refused with the key, the model's value and the given value; a pure reorder
    of the modalities is replaced by the model's order. Returns notes to show the user.
    """
    notes: list[str] = []
    modalities = [str(m) for m in data_cfg.modalities]
    if modalities != contract["modalities"]:
        if sorted(modalities) == sorted(contract["modalities"]):
            notes.append(
                f"data.modalities={_show(modalities)} reorders the model's channels: using the model's own "
                f"order {_show(contract['modalities'])}"
            )
        else:
            _refuse("data.modalities", contract["modalities"], modalities)
    data_cfg.modalities = list(contract["modalities"])
    classes = [str(c) for c in data_cfg.labels.classes]
    if classes != contract["classes"]:
        _refuse("data.labels.classes", contract["classes"], classes)
    plane = str(data_cfg.slices.plane)
    if plane != contract["plane"]:
        _refuse("data.slices.plane", contract["plane"], plane)
    _enforce_crop(contract, data_cfg)
    preprocess = contract["preprocess"]
    clip = _plain(data_cfg.preprocess.get("clip_percentiles"))
    clip = None if clip is None else [float(c) for c in clip]
    if clip != preprocess["clip_percentiles"]:
        _refuse("data.preprocess.clip_percentiles", preprocess["clip_percentiles"], clip)
    reorient = data_cfg.preprocess.get("reorient")
    reorient = None if reorient is None else str(reorient).upper()
    if reorient != preprocess["reorient"]:
        _refuse("data.preprocess.reorient", preprocess["reorient"], reorient)
    if "data.layout.mask_labels" in given:
        labels = _plain(data_cfg.layout.mask_labels)
        if sorted(labels) != sorted(preprocess["mask_labels"]):
            _refuse("data.layout.mask_labels", preprocess["mask_labels"], labels)
    return notes


def _enforce_crop(contract: Mapping[str, Any], data_cfg: Any) -> None:
    """``data.crop`` and ``data.context`` must be the model's (absent from older configs: set)."""
    crop = dict(contract.get("crop") or NO_CROP)
    context = int(contract.get("context", 0))
    given = data_cfg.get("crop")
    mode = crop["mode"] if given is None or given.get("mode") is None else str(given.mode)
    if mode != crop["mode"]:
        _refuse("data.crop.mode", crop["mode"], mode)
    size = crop["size"] if given is None or given.get("size") is None else int(given.size)
    if mode != "none" and size != crop["size"]:
        _refuse("data.crop.size", crop["size"], size)
    given_context = data_cfg.get("context")
    if given_context is not None and int(given_context) != context:
        _refuse("data.context", context, given_context)
    with open_dict(data_cfg):
        data_cfg.crop = {"mode": crop["mode"], "size": crop["size"]}
        data_cfg.context = context


def check_grid(contract: Mapping[str, Any], volume_shape: tuple[int, int, int], where: str) -> None:
    """The cohort's volumes must have the shape the model was trained on."""
    grid = contract.get("grid")
    if grid is not None and list(volume_shape) != list(grid["shape"]):
        raise ContractError(
            f"{where}: volumes of shape {list(volume_shape)} differ from the model's input grid "
            f"{grid['shape']} (image size {contract['image_size']}); resample them first"
        )


def grid_mismatch(contract: Mapping[str, Any], found: Mapping[str, Any]) -> str | None:
    """Why a volume's grid (from :func:`grid_of`) differs from the model's, or None."""
    grid = contract.get("grid")
    if grid is None:
        return None
    if list(found["shape"]) != list(grid["shape"]):
        return f"shape {found['shape']}, expected {grid['shape']}"
    if not np.allclose(found["spacing"], grid["spacing"], rtol=_SPACING_TOLERANCE, atol=_SPACING_TOLERANCE):
        return f"voxel spacing {found['spacing']} mm, expected {grid['spacing']}"
    if found["orientation"] != grid["orientation"]:
        return f"orientation {found['orientation']}, expected {grid['orientation']}"
    return None


def _refuse(key: str, model_value: Any, given: Any) -> None:
    raise ContractError(
        f"{key}={_show(given)} contradicts the model's input contract: it was trained with "
        f"{key}={_show(model_value)} (drop the override)"
    )


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def read_checkpoint_contract(
    checkpoint: Mapping[str, Any],
    fallback_data_cfg: Mapping[str, Any] | None,
    expected: str = "classifier",
    source: str = UNNAMED,
):
    """The contract stored in a loaded checkpoint dict, else one rebuilt from the run's config
    (a classifier's: segmenters always carry theirs); refused unless its model is ``expected``."""
    contract = checkpoint.get("input_contract")
    if contract is not None:
        refuse_kind(contract, expected, source)
        return dict(contract)
    if fallback_data_cfg is None:
        raise ContractError(
            "the checkpoint records no input contract and no run config.yaml is beside it: "
            "pass the run directory (ckpt=RUN) instead of a lone checkpoint"
        )
    log.info("The checkpoint predates input contracts: using the run's saved data config")
    return from_config(fallback_data_cfg)

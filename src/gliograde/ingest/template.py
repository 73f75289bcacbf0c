"""The model's template: mean skull-stripped images per modality and a brain probability on a
coarse grid, plus the model's own grid, built from model-space (training) patients."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from gliograde.data.errors import DataError

TEMPLATE_VERSION = 1
TEMPLATE_FILE = "template.json"
_GEOMETRY_TOLERANCE = 1e-4


@dataclass
class Template:
    """Per-modality mean images and brain probability (same ~2 mm grid) and the model grid."""

    images: dict[str, sitk.Image]
    brain: sitk.Image
    grid: sitk.Image
    meta: dict = field(default_factory=dict)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of every image's voxels and geometry: two templates that map a head to the same
        place share it, whatever folder or export they were read from."""
        digest = hashlib.sha256()
        named = {**{f"image:{m}": image for m, image in self.images.items()}, "brain": self.brain, "grid": self.grid}
        for name in sorted(named):
            image = named[name]
            digest.update(name.encode())
            for numbers in (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()):
                digest.update(np.round(np.asarray(numbers, dtype=np.float64), 4).tobytes())
            if name != "grid":  # the grid is geometry only; its voxels are never read
                digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image), dtype=np.float32).tobytes())
        return digest.hexdigest()


def normalise_brain(image: sitk.Image, brain: sitk.Image | None = None) -> sitk.Image:
    """``image`` (float32) divided by its median inside ``brain`` (default: its non-zero voxels),
    so one scanner's scale and another's agree."""
    array = sitk.GetArrayViewFromImage(image)
    mask = array > 0 if brain is None else sitk.GetArrayViewFromImage(brain) > 0
    values = array[mask]
    scale = float(np.median(values)) if values.size else 0.0
    if scale <= 0:
        scale = 1.0
    return sitk.Cast(image, sitk.sitkFloat32) / scale


def build_template(
    patients: Sequence[Mapping[str, Path]], modalities: Sequence[str], spacing: float = 2.0
) -> Template:
    """The mean brain-normalised image per modality and the brain probability (fraction of
    patients whose voxel is non-zero), on a grid ``spacing`` mm coarser than the patients'."""
    if not patients:
        raise DataError("no patients to build the template from", where="template")
    modalities = list(modalities)
    sums: dict[str, np.ndarray] = {}
    brain_sum = None
    grid = None
    coarse = None
    for patient in patients:
        missing = [m for m in modalities if m not in patient]
        if missing:
            where = str(next(iter(patient.values()), ""))
            raise DataError(f"template: no {', '.join(missing)} file", where=where)
        images = {m: sitk.Cast(sitk.ReadImage(str(patient[m])), sitk.sitkFloat32) for m in modalities}
        first = images[modalities[0]]
        if grid is None:
            grid = first
            factor = [max(1, int(round(spacing / s))) for s in first.GetSpacing()]
        for m, image in images.items():
            if not _same_grid(image, grid):
                raise DataError(
                    "template: not on the first patient's grid (size, spacing, origin or direction differ)",
                    where=str(patient[m]),
                )
        brain = None
        for image in images.values():
            nonzero = image > 0
            brain = nonzero if brain is None else brain | nonzero
        shrunk_brain = sitk.BinShrink(sitk.Cast(brain, sitk.sitkFloat32), factor)
        if coarse is None:
            coarse = shrunk_brain
        array = sitk.GetArrayFromImage(shrunk_brain)
        brain_sum = array if brain_sum is None else brain_sum + array
        for m, image in images.items():
            shrunk = sitk.GetArrayFromImage(sitk.BinShrink(normalise_brain(image, brain), factor))
            sums[m] = shrunk if m not in sums else sums[m] + shrunk
    count = float(len(patients))
    mean_images = {m: _like(sums[m] / count, coarse) for m in modalities}
    probability = _like(brain_sum / count, coarse)
    model_grid = sitk.Image(grid.GetSize(), sitk.sitkUInt8)
    model_grid.CopyInformation(grid)
    meta = {
        "version": TEMPLATE_VERSION,
        "patients": [str(Path(next(iter(p.values()))).parent.name) for p in patients],
        "modalities": modalities,
        "spacing": [float(s) for s in coarse.GetSpacing()],
    }
    return Template(images=mean_images, brain=probability, grid=model_grid, meta=meta)


def save_template(template: Template, folder: Path) -> None:
    """Write the template to ``folder`` as NIfTI files and ``template.json`` (their sha256), all
    at once: a temporary sibling folder renamed into place. A previous template there is
    replaced; a folder holding anything else is refused."""
    folder = Path(folder)
    if folder.exists() and not (folder / TEMPLATE_FILE).is_file() and any(folder.iterdir()):
        raise DataError(
            f"holds files but no {TEMPLATE_FILE}: not replaced by a template; choose an empty or new folder",
            where=folder,
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files = {f"{m}.nii.gz": image for m, image in template.images.items()}
        files["brain.nii.gz"] = template.brain
        files["grid.nii.gz"] = template.grid
        hashes = {}
        for name, image in files.items():
            sitk.WriteImage(image, str(tmp / name), useCompression=True)
            hashes[name] = _sha256(tmp / name)
        record = {"meta": template.meta, "images": sorted(template.images), "files": hashes}
        (tmp / TEMPLATE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_template(folder: Path) -> Template:
    """The template saved in ``folder``; a missing, unreadable or changed file is one line."""
    folder = Path(folder)
    index = folder / TEMPLATE_FILE
    if not index.is_file():
        raise DataError(
            f"no {TEMPLATE_FILE}: not a template folder (build one with run_template)", where=folder
        )
    try:
        record = json.loads(index.read_text())
        hashes = dict(record["files"])
        names = list(record["images"])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"unreadable ({err}); rebuild the template", where=index) from None
    for name, digest in hashes.items():
        path = folder / name
        if not path.is_file():
            raise DataError("missing template file; rebuild the template", where=path)
        if _sha256(path) != digest:
            raise DataError(
                "changed since the template was saved (sha256 differs); rebuild the template", where=path
            )
    images = {m: sitk.ReadImage(str(folder / f"{m}.nii.gz"), sitk.sitkFloat32) for m in names}
    brain = sitk.ReadImage(str(folder / "brain.nii.gz"), sitk.sitkFloat32)
    grid = sitk.ReadImage(str(folder / "grid.nii.gz"))
    return Template(images=images, brain=brain, grid=grid, meta=dict(record.get("meta", {})))


def run_template(run_dir: Path, max_patients: int = 40) -> Template:
    """The template of a training run: ``RUN/template/`` if present, else built from (at most
    ``max_patients`` of) the run's training patients and saved there."""
    import yaml  # here: only this entry reads a run's config

    from gliograde.data.discovery.cohort import discover_cohort
    from gliograde.data.discovery.specs import MODALITIES, LabelSpec, LayoutSpec, from_mapping

    run_dir = Path(run_dir)
    folder = run_dir / "template"
    if (folder / TEMPLATE_FILE).is_file():
        return load_template(folder)
    config_path, splits_path = run_dir / "config.yaml", run_dir / "splits.csv"
    for path in (config_path, splits_path):
        if not path.is_file():
            raise DataError(
                f"not a training run (no {path.name}); pass ingest.template=FOLDER", where=run_dir
            )
    config = yaml.safe_load(config_path.read_text()) or {}
    data = config.get("data") or {}
    splits = pd.read_csv(splits_path, dtype=str, keep_default_na=False)
    train = sorted(splits.loc[splits["split"] == "train", "patient_id"])
    if not train:
        raise DataError("no training patients in splits.csv; pass ingest.template=FOLDER", where=splits_path)
    modalities = [m for m in (data.get("modalities") or MODALITIES) if m in MODALITIES]
    root = data.get("root")
    gone = f"the run's training data (data.root={root}) is gone; pass ingest.template=FOLDER"
    if not root or not Path(root).exists():
        raise DataError(gone, where=run_dir)
    layout = from_mapping(LayoutSpec, data.get("layout"), "data.layout")
    try:
        cohort = discover_cohort(
            root, layout, LabelSpec(file=None), require_labels=False, modalities=modalities
        )
    except DataError:
        raise DataError(gone, where=run_dir) from None
    found = {p.patient_id: p.modalities for p in cohort.patients}
    chosen = [pid for pid in train if pid in found]
    if not chosen:
        raise DataError(gone, where=run_dir)
    if len(chosen) > max_patients:
        # Deterministic: evenly spaced through the sorted training ids.
        picks = np.linspace(0, len(chosen) - 1, max_patients).round().astype(int)
        chosen = [chosen[i] for i in sorted(set(picks.tolist()))]
    template = build_template([found[pid] for pid in chosen], modalities)
    template.meta["run"] = str(run_dir)
    save_template(template, folder)
    return load_template(folder)  # as every later reader sees it (NIfTI's float32 geometry)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=_GEOMETRY_TOLERANCE)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=_GEOMETRY_TOLERANCE)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=_GEOMETRY_TOLERANCE)
    )


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(reference)
    return image


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""What was done to one ingested patient, kept beside its volumes: ``ingest.json`` and the
transforms (as files ITK reads) in ``transforms/``."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from gliograde.data.errors import DataError

RECORD_FILE = "ingest.json"
TRANSFORMS_FOLDER = "transforms"
_LIBRARIES = ("gliograde", "SimpleITK", "pydicom", "nibabel", "numpy")


def library_versions() -> dict[str, str]:
    """The versions of the libraries an ingestion ran with."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_transforms(transforms: Mapping[str, sitk.Transform], folder: Path) -> dict[str, str]:
    """Write each transform as ``folder/transforms/<name>.tfm``; return name -> relative path."""
    target = folder / TRANSFORMS_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, transform in transforms.items():
        path = target / f"{name}.tfm"
        sitk.WriteTransform(transform, str(path))
        written[name] = f"{TRANSFORMS_FOLDER}/{path.name}"
    return written


def write_record(folder: Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``folder/ingest.json`` (the whole output folder is staged, so a plain
    write cannot be read half-done)."""
    path = folder / RECORD_FILE
    path.write_text(json.dumps(record, indent=2, default=_plain) + "\n")
    return path


def read_record(folder: Path, patient: str | None = None) -> dict[str, Any] | None:
    """The ``ingest.json`` of a patient folder, or None for a folder that was not ingested; an
    unreadable record, or a volume changed since it was ingested, is one line (the quality check
    was of other images)."""
    from gliograde.inference.calibration import file_sha256

    path = folder / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        qc = record["qc"]
        bool(qc["passed"])
        hashes = dict(record["volume_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(
            "damaged ingestion record: its quality check cannot be read; ingest the patient again", patient, path
        ) from None
    for modality, digest in hashes.items():
        volume = folder / str(record["volumes"].get(modality, ""))
        if not volume.is_file() or file_sha256(volume) != digest:
            raise DataError(
                f"{modality} volume changed or missing since it was ingested (its quality check was of other "
                "images): ingest the patient again",
                patient,
                volume,
            )
    return record


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and paths."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)

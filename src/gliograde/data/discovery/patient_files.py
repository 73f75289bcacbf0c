"""One patient's folder: its modality files and tumour mask found by name (BraTS spellings and known
misnamed masks included), as a PatientRecord."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gliograde.data.discovery.identity import shared_files
from gliograde.data.discovery.specs import MODALITIES
from gliograde.data.errors import DataError

logger = logging.getLogger(__name__)
_STRAY_DIRS = frozenset({"__MACOSX", "$RECYCLE.BIN", "System Volume Information"})
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
KNOWN_MASK_NAMES: dict[str, tuple[str, ...]] = {"brats2020": ("W39_1998.09.19_Segm",)}
"""File stems (per ``layout.name``) that a released cohort uses for a mask instead of
``layout.mask_file``; used, with a warning, only when that file is absent."""


@dataclass(frozen=True)
class PatientRecord:
    """One patient's folder, files and label; found by listing only, nothing decoded."""

    patient_id: str  # the folder name
    folder: Path
    modalities: Mapping[str, Path]  # keys: the cohort's stored modalities, in MODALITIES order
    mask: Path | None
    label: int | None  # index into Cohort.classes; None if unlabelled


def _nifti_name(name: str) -> bool:
    lower = name.lower()
    return any(lower.endswith(suffix) for suffix in NIFTI_SUFFIXES)


def _scan_patient(
    folder: Path,
    templates: dict[str, str],
    aliases: tuple[str, ...] = (),
    required: frozenset[str] = frozenset(MODALITIES),
) -> tuple[PatientRecord | None, DataError | None]:
    """A patient's files, or ``None`` and the problem (one error, its issues joined by ``;``).

    Only the ``required`` modalities and the mask can be a problem; another modality is listed
    when its file is there and usable, and silently left out otherwise."""
    pid = folder.name
    try:
        with os.scandir(folder) as entries:
            files: set[str] = set()
            others: dict[str, str] = {}  # names that exist but are no readable file: what they are
            for entry in entries:
                try:
                    if entry.is_file():
                        files.add(entry.name)
                    else:
                        others[entry.name] = _not_a_file(folder / entry.name)
                except OSError as err:
                    others[entry.name] = f"cannot be read ({err.strerror or err})"
    except OSError as err:
        return None, DataError(f"cannot list folder ({err.strerror or err})", patient=pid, where=folder)
    by_lower: dict[str, list[str]] = {}
    for name in files:
        by_lower.setdefault(name.lower(), []).append(name)

    issues: list[str] = []
    found: dict[str, Path] = {}
    for key, template in templates.items():
        stem = template.replace("{id}", pid)
        present = [stem + s for s in NIFTI_SUFFIXES if stem + s in files]
        unusable = [f"{stem + s} {others[stem + s]}" for s in NIFTI_SUFFIXES if stem + s in others]
        if key != "mask" and key not in required:
            if len(present) == 1 and not unusable:
                found[key] = folder / present[0]
            continue
        if unusable:
            issues.append(f"{key} file {'; '.join(unusable)}")
        elif len(present) == 2:
            issues.append(f"both {present[0]} and {present[1]} exist for {key}; keep one")
        elif present:
            found[key] = folder / present[0]
        elif key != "mask":
            near = sorted(n for s in NIFTI_SUFFIXES for n in by_lower.get((stem + s).lower(), []))
            hint = f"; found {', '.join(near)}, which differs in case" if near else ""
            issues.append(f"missing {key} file (expected {stem}.nii[.gz]{hint})")
    if issues:
        return None, DataError("; ".join(issues), patient=pid, where=folder)

    mask = found.pop("mask", None)
    shared = shared_files(found)
    if shared:
        return None, DataError(shared, patient=pid, where=folder)
    if mask is None:
        mask = _known_mask(folder, files, templates["mask"].replace("{id}", pid), aliases, found)
    return PatientRecord(patient_id=pid, folder=folder, modalities=found, mask=mask, label=None), None


def _not_a_file(path: Path) -> str:
    """What a directory entry that is not a regular file is, in words for an error message."""
    if path.is_symlink():
        target = os.readlink(path)
        if not path.exists():
            return f"is a broken symbolic link to {target}"
        if path.is_dir():
            return f"is a symbolic link to the directory {target}"
        return f"is a symbolic link to {target}, which is not a regular file"
    if path.is_dir():
        return "is a directory"
    return "is not a regular file"


def _known_mask(
    folder: Path, files: set[str], expected_stem: str, aliases: tuple[str, ...], found: dict[str, Path]
) -> Path | None:
    """The mask under a name the preset knows, or ``None``; never a guess, never silent."""
    pid = folder.name
    expected = expected_stem + ".nii[.gz]"
    known = sorted(stem + s for stem in aliases for s in NIFTI_SUFFIXES if stem + s in files)
    if len(known) == 1:
        logger.warning("patient %s: no %s; using %s as its mask", pid, expected, known[0])
        return folder / known[0]
    used = {p.name for p in found.values()}
    others = sorted(n for n in files if _nifti_name(n) and not _is_stray(n) and n not in used)
    if others:
        logger.warning(
            "patient %s: no %s, so no tumour mask; not taking %s as the mask (only files the "
            "layout names count); rename the tumour mask to %s",
            pid,
            expected,
            ", ".join(others),
            expected,
        )
    return None


def _is_stray(name: str) -> bool:
    return name.startswith(".") or name in _STRAY_DIRS

"""Which files belong to which patient: one patient folder, a folder of them, or a manifest CSV."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gliograde.data.errors import DataError
from gliograde.data.discovery.identity import shared_files
from gliograde.data.discovery.specs import MODALITIES
from gliograde.errors import ConfigError
from gliograde.files.tables import read_table

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class PatientFiles:
    """One patient's volumes: the modalities asked for (keys in MODALITIES order) and an optional mask."""

    patient_id: str
    modalities: Mapping[str, Path]
    mask: Path | None


def from_folder(
    folder: Path,
    naming: Mapping[str, Any],
    patterns: Mapping[str, str | None],
    modalities: Sequence[str] = MODALITIES,
) -> PatientFiles:
    """The files of the patient whose folder is ``folder`` (its name is the patient id).

    ``patterns`` (``files.flair=GLOB`` ...) are globs inside the folder and win over the
    training cohort's ``naming`` templates, where ``{id}`` is the folder's name. Only
    ``modalities`` (the model's) are looked for; other files are ignored.
    """
    patient = folder.name
    if not folder.is_dir():
        raise DataError("no such patient folder", patient, folder)
    found = {}
    for name in _canonical(modalities):
        path = _find(folder, patient, patterns.get(name), naming["modality_files"][name], name)
        if path is None:
            raise DataError(
                f"no {name} volume (looked for {_wanted(patterns.get(name), naming['modality_files'][name])}; "
                f"set files.{name}=GLOB for other names)",
                patient,
                folder,
            )
        found[name] = path
    shared = shared_files(found)
    if shared:
        raise DataError(f"{shared} (set files.<modality>=GLOB to tell them apart)", patient, folder)
    mask = _find(folder, patient, patterns.get("mask"), naming["mask_file"], "mask")
    return PatientFiles(patient, found, mask)


def from_root(
    root: Path,
    naming: Mapping[str, Any],
    patterns: Mapping[str, str | None],
    modalities: Sequence[str] = MODALITIES,
    skipped: list[DataError] | None = None,
) -> list[PatientFiles]:
    """Every patient folder (a sub-folder holding NIfTI files) of ``root``, by name. With a
    ``skipped`` list, a folder whose files cannot be found is added to it instead of raising."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and _has_nifti(p))
    if not folders:
        raise DataError("no patient folder with NIfTI files inside", where=root)
    found = []
    for folder in folders:
        try:
            found.append(from_folder(folder, naming, patterns, modalities))
        except DataError as err:
            if skipped is None:
                raise
            skipped.append(err)
    return found


def from_input(
    path: Path,
    naming: Mapping[str, Any],
    patterns: Mapping[str, str | None],
    modalities: Sequence[str] = MODALITIES,
    skipped: list[DataError] | None = None,
) -> list[PatientFiles]:
    """``input=DIR``: a patient folder if it holds NIfTI files itself, else a folder of them
    (``skipped``: see :func:`from_root`)."""
    if not path.is_dir():
        raise ConfigError(f"input={path}: no such folder (a patient folder, or a folder of patient folders)")
    if _has_nifti(path):
        return [from_folder(path, naming, patterns, modalities)]
    return from_root(path, naming, patterns, modalities, skipped)


def from_manifest(
    path: Path, modalities: Sequence[str] = MODALITIES, skipped: list[DataError] | None = None
) -> list[PatientFiles]:
    """Rows ``patient_id``, one column per modality in ``modalities`` (the model's)[, ``mask``]
    of file paths (relative to the CSV's folder); other columns are ignored. With a ``skipped``
    list, a row whose files are missing is added to it instead of raising."""
    wanted = _canonical(modalities)
    if not path.is_file():
        raise ConfigError(f"manifest={path}: no such file")
    table = read_table(path)
    table = table.set_axis([str(c).strip() for c in table.columns], axis=1).apply(lambda c: c.str.strip())
    columns = list(table.columns)
    rows = table.to_dict("records")
    missing = [c for c in ("patient_id", *wanted) if c not in columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; needs patient_id, {', '.join(wanted)}[, mask]", where=path
        )
    if not rows:
        raise DataError("no rows", where=path)
    patients, seen = [], set()
    for number, row in enumerate(rows, start=2):
        patient = row["patient_id"]
        if not patient:
            raise DataError(f"row {number}: empty patient_id", where=path)
        if patient in seen:
            raise DataError(f"row {number}: patient_id listed twice", patient, path)
        seen.add(patient)
        try:
            patients.append(_manifest_row(path, row, number, wanted))
        except DataError as err:
            if skipped is None:
                raise
            skipped.append(err)
    return patients


def _manifest_row(path: Path, row: Mapping[str, str], number: int, wanted: Sequence[str]) -> PatientFiles:
    patient = row["patient_id"]
    files = {}
    for name in wanted:
        if not row[name]:
            raise DataError(f"row {number}: no {name} file given", patient, path)
        files[name] = _resolve(path.parent, row[name], patient)
    shared = shared_files(files)
    if shared:
        raise DataError(f"row {number}: {shared}", patient, path)
    mask = _resolve(path.parent, row["mask"], patient) if row.get("mask") else None
    return PatientFiles(patient, files, mask)


def _canonical(modalities: Sequence[str]) -> tuple[str, ...]:
    wanted = set(modalities)
    return tuple(m for m in MODALITIES if m in wanted)


def _resolve(base: Path, value: str, patient: str) -> Path:
    file = Path(value).expanduser()
    file = file if file.is_absolute() else base / file
    if not file.is_file():
        raise DataError("file not found", patient, file)
    return file


def _find(folder: Path, patient: str, pattern: str | None, template: str, name: str) -> Path | None:
    if pattern:
        matches = sorted(folder.glob(pattern))
    else:
        stem = template.format(id=patient)
        matches = [folder / f"{stem}{s}" for s in _NIFTI_SUFFIXES if (folder / f"{stem}{s}").is_file()]
        if not matches:  # same naming, but the folder is not named after the patient
            loose = template.replace("{id}", "*")
            matches = sorted(p for s in _NIFTI_SUFFIXES for p in folder.glob(loose + s))
    if len(matches) > 1:
        shown = ", ".join(p.name for p in matches[:4])
        raise DataError(
            f"{len(matches)} files match the {name} pattern ({shown}); set files.{name}=GLOB", patient, folder
        )
    return matches[0] if matches else None


def _wanted(pattern: str | None, template: str) -> str:
    return pattern if pattern else template.replace("{id}", "<folder name>") + ".nii[.gz]"


def _has_nifti(folder: Path) -> bool:
    return any(p.name.endswith(_NIFTI_SUFFIXES) for p in folder.iterdir() if p.is_file())

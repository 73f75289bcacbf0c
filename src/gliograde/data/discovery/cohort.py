"""Cohort discovery: find the patient folders under ``data.root``, their files and their labels.

Nothing here opens a volume; it only lists folders and reads the label CSV, so every naming
problem surfaces as a one-line :class:`DataError` before any decoding starts.

Rules, in short:

* ``root`` may be the folder holding the patient folders or a parent up to two levels above it
  (the Kaggle zip nests ``BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/<patients>``).
  A patient folder is a directory whose name fully matches ``layout.patient_pattern``. Entries
  that archives carry (``__MACOSX``, names starting with ``.``) are never searched into. The
  shallowest depth holding any patient folder wins; several places at that depth is an error.
* Each modality file is ``<template with {id}>.nii`` or ``.nii.gz`` in the patient folder; a
  missing one, or both spellings at once, excludes the patient (a per-patient problem). Only
  the modalities the run asks for are required; any other modality is kept only when every
  patient found has a usable file for it (so one cache can serve later runs asking for other
  subsets), and its absence or any problem with it is never a problem of the patient.
* A modality or mask name that exists but is no readable file (a directory, a broken symbolic
  link) is a per-patient problem that says what it is.
* The mask is ``layout.mask_file`` likewise. When absent, only a file the preset itself names
  as a mask (:data:`KNOWN_MASK_NAMES`: the Kaggle 2020 copy names case 355's mask
  ``W39_1998.09.19_Segm.nii``) is taken instead, with a warning. Any other NIfTI file (a
  ``_brainmask.nii``, say) is never guessed to be the tumour mask: the mask is ``None`` and a
  warning names the files passed over. Whether a missing mask matters is the caller's decision.
* A folder whose name matches the pattern only once surrounding spaces are stripped is a
  per-patient problem that names the spaces and the fix (rename it).
* Labels come from :mod:`gliograde.data.discovery.labels`.

Warnings go to ``logging.getLogger(__name__)`` (and ``gliograde.data.discovery.labels``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from gliograde.data.errors import DataError
from gliograde.data.discovery.labels import LabelTable, UnusableLabelTable, resolve_label_file
from gliograde.data.discovery.specs import MODALITIES, LabelSpec, LayoutSpec
from gliograde.errors import ConfigError
from gliograde.data.discovery.patient_files import KNOWN_MASK_NAMES, PatientRecord, _is_stray, _scan_patient

logger = logging.getLogger(__name__)

MAX_DEPTH = 2
"""How many levels above the patient folders' parent ``root`` may be."""


_MAX_LISTED = 5


@dataclass
class Cohort:
    """The patients found under a root, and the ones left out with why."""

    root: Path  # the folder that holds the patient folders (resolved)
    patients: list[PatientRecord]  # every patient whose files were found, sorted by patient_id
    classes: tuple[str, ...]
    labelled: bool  # a label table with the label column was found and used
    problems: list[DataError] = field(default_factory=list)  # per-patient problems (files or label)

    def excluded_ids(self) -> set[str]:
        """Patients with a problem: not to be used for training or evaluation."""
        return {p.patient for p in self.problems if p.patient is not None}

    label_file: Path | None = None
    modalities: tuple[str, ...] = MODALITIES  # every patient's modality keys, in MODALITIES order


def find_patient_root(root: str | Path, layout: LayoutSpec, label_file: str | None = None) -> Path:
    """The folder holding the patient folders: ``root`` itself or a folder up to two levels below.

    When the shallowest depth with patient folders has them in several places (the Kaggle
    archive holds both the training and the validation cohort), the one place that holds
    ``label_file`` (a relative name) wins. Raises :class:`DataError` when ``root`` does not
    exist or is not a directory, when no patient folder is found within two levels, and when
    the places stay ambiguous (the message lists them).
    """
    pattern = _compile_pattern(layout)
    given = Path(root).expanduser()
    if not given.exists():
        raise DataError("does not exist (check data.root)", where=given)
    if not given.is_dir():
        raise DataError(
            f"is not a directory; data.root must be the folder holding patient folders matching "
            f"'{pattern.pattern}' or a parent up to {MAX_DEPTH} levels above it",
            where=given,
        )
    base = given.resolve()

    level = [base]
    last_seen: list[str] = []
    for depth in range(MAX_DEPTH + 1):
        hits: dict[Path, list[str]] = {}
        below: list[Path] = []
        for folder in level:
            try:
                subdirs = _subdirectories(folder)
            except OSError as err:
                if folder == base:
                    raise DataError(f"cannot list folder ({err.strerror or err})", where=folder) from None
                logger.debug("skipping unreadable folder %s: %s", folder, err)
                continue
            names = [d.name for d in subdirs if pattern.fullmatch(d.name)]
            if names:
                hits[folder] = names
            below.extend(d for d in subdirs if not pattern.fullmatch(d.name))
            if subdirs:
                last_seen = [d.name for d in subdirs]
        if len(hits) == 1:
            return next(iter(hits))
        if hits:
            labelled = [
                f
                for f in hits
                if label_file and not Path(label_file).is_absolute() and (f / label_file).is_file()
            ]
            if len(labelled) == 1:
                logger.info(
                    "patient folders in %d places; using %s, which holds %s",
                    len(hits),
                    labelled[0],
                    label_file,
                )
                return labelled[0]
            raise DataError(_ambiguous_message(hits, pattern, depth), where=given)
        level = below
        if not level:
            break

    hint = ""
    if pattern.fullmatch(base.name):
        hint = f" ({base.name!r} itself looks like a patient folder; point data.root at its parent)"
    elif last_seen:
        shown = sorted(last_seen)[:3]
        hint = f" (folders seen: {', '.join(shown)}{', ...' if len(last_seen) > 3 else ''})"
    else:
        hint = " (no subfolders at all)"
    raise DataError(
        f"no patient folders matching '{pattern.pattern}' here or up to {MAX_DEPTH} levels below; "
        f"is data.layout right?{hint}",
        where=given,
    )


def discover_cohort(
    root: str | Path,
    layout: LayoutSpec,
    labels: LabelSpec,
    require_labels: bool,
    modalities: Sequence[str] = MODALITIES,
) -> Cohort:
    """Find the patients under ``root``, their files and (when configured) their labels.

    ``modalities`` are the ones a patient must have; the records hold those plus every other
    modality all the patients found have (:attr:`Cohort.modalities`, in MODALITIES order).

    Raises :class:`DataError` for problems with the whole cohort (no patient folders, an
    ambiguous root, an unusable label table when ``require_labels``, a duplicate id in the
    table, patient folders whose names differ only in case). Problems with one patient exclude
    it and are collected in :attr:`Cohort.problems` (at most one for its files and one for its
    label, sorted by patient); whether an empty cohort is acceptable is the caller's decision.
    """
    templates = _templates(layout)
    required = frozenset(modalities)
    aliases = KNOWN_MASK_NAMES.get(layout.name, ())
    patient_root = find_patient_root(root, layout, labels.file)
    pattern = _compile_pattern(layout)
    folders = sorted(
        (d for d in _subdirectories(patient_root) if pattern.fullmatch(d.name)),
        key=lambda d: d.name,
    )
    _check_unique_ids(folders, patient_root)
    spaced = _spaced_folders(patient_root, pattern)
    ids = [d.name for d in folders]

    table = _label_table(labels, patient_root, root, require_labels)
    if table is not None:
        table.warn_unmatched(ids + list(spaced), patient_root)

    patients: list[PatientRecord] = []
    problems: list[DataError] = list(spaced.values())
    for folder in folders:
        pid = folder.name
        record, problem = _scan_patient(folder, templates, aliases, required)
        if problem is not None:
            problems.append(problem)
        label: int | None = None
        if table is not None:
            try:
                label = table.label_of(pid, required=require_labels)
            except DataError as err:
                problems.append(err)
        if record is not None:  # listed even with a label problem: its images still get cached
            patients.append(replace(record, label=label))
    problems.sort(key=lambda err: err.patient or "")
    kept = tuple(
        m for m in MODALITIES if m in required or (patients and all(m in p.modalities for p in patients))
    )
    patients = [replace(p, modalities={m: p.modalities[m] for m in kept}) for p in patients]

    if problems:
        excluded = len({p.patient for p in problems})
        logger.warning(
            "excluding %d of %d patient(s) under %s; first problem: %s",
            excluded,
            len(folders),
            patient_root,
            problems[0],
        )
    return Cohort(
        root=patient_root,
        patients=patients,
        classes=tuple(labels.classes),
        labelled=table is not None,
        problems=problems,
        label_file=None if table is None else table.path,
        modalities=kept,
    )


# ---------------------------------------------------------------------------------------------


def _compile_pattern(layout: LayoutSpec) -> re.Pattern[str]:
    try:
        return re.compile(layout.patient_pattern)
    except re.error as err:
        raise ConfigError(
            f"data.layout.patient_pattern {layout.patient_pattern!r} is not a valid regex: {err}"
        ) from None


def _templates(layout: LayoutSpec) -> dict[str, str]:
    """``layout.modality_files`` checked against MODALITIES, in that order, plus ``"mask"``."""
    files = dict(layout.modality_files)
    missing = [m for m in MODALITIES if m not in files]
    unknown = sorted(set(files) - set(MODALITIES))
    if missing or unknown:
        raise ConfigError(
            f"data.layout.modality_files must have exactly the keys {list(MODALITIES)} "
            f"(missing: {missing}, unknown: {unknown})"
        )
    templates = {m: str(files[m]) for m in MODALITIES}
    templates["mask"] = str(layout.mask_file)
    for key, template in templates.items():
        where = "mask_file" if key == "mask" else f"modality_files.{key}"
        if "/" in template or "\\" in template or not template.strip():
            raise ConfigError(
                f"data.layout.{where} {template!r} must be a file-name stem in the patient folder"
            )
    if len(set(templates.values())) != len(templates):
        raise ConfigError(f"data.layout templates must all differ, got {templates}")
    return templates


def _subdirectories(folder: Path) -> list[Path]:
    """Directories directly in ``folder`` (following links), leaving out archive debris."""
    out = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if _is_stray(entry.name):
                continue
            try:
                if entry.is_dir():
                    out.append(folder / entry.name)
            except OSError:
                continue
    return sorted(out, key=lambda p: p.name)


def _ambiguous_message(hits: dict[Path, list[str]], pattern: re.Pattern[str], depth: int) -> str:
    places = sorted(hits)
    shown = ", ".join(f"{p} ({len(hits[p])} patient folder(s))" for p in places[:_MAX_LISTED])
    if len(places) > _MAX_LISTED:
        shown += f", and {len(places) - _MAX_LISTED} more"
    seen: dict[str, int] = {}
    for names in hits.values():
        for name in names:
            seen[name] = seen.get(name, 0) + 1
    shared = sorted(name for name, count in seen.items() if count > 1)
    dup = ""
    if shared:
        dup = f"; {len(shared)} patient id(s) appear in more than one, e.g. {shared[0]}"
    level = "here" if depth == 0 else f"{depth} level(s) below"
    return (
        f"ambiguous root: patient folders matching '{pattern.pattern}' found in {len(places)} "
        f"places {level}: {shown}{dup}; point data.root at one of them"
    )


def _spaced_folders(patient_root: Path, pattern: re.Pattern[str]) -> dict[str, DataError]:
    """Folders that are patient folders but for spaces around the name: {stripped id: problem}."""
    found: dict[str, DataError] = {}
    for folder in _subdirectories(patient_root):
        name, stripped = folder.name, folder.name.strip()
        if name != stripped and not pattern.fullmatch(name) and pattern.fullmatch(stripped):
            where = "a trailing space" if name.startswith(stripped) else "spaces around it"
            if name.endswith(stripped):
                where = "a leading space"
            found[stripped] = DataError(
                f"folder name {name!r} has {where}, so it is not read as patient {stripped}; "
                f"rename the folder to {stripped!r}",
                patient=stripped,
                where=folder,
            )
    return found


def _check_unique_ids(folders: list[Path], patient_root: Path) -> None:
    """Folder names that differ only in case clash on macOS/Windows and in label lookups."""
    by_key: dict[str, str] = {}
    for folder in folders:
        key = folder.name.casefold()
        if key in by_key:
            raise DataError(
                f"duplicate patient id: folders {by_key[key]!r} and {folder.name!r} differ only "
                f"in case; keep one",
                where=patient_root,
            )
        by_key[key] = folder.name


def _label_table(
    spec: LabelSpec, patient_root: Path, root: str | Path, require_labels: bool
) -> LabelTable | None:
    if spec.file is None:
        if require_labels:
            raise DataError(
                "labels are required but data.labels.file is null: set it to your label CSV "
                "(and data.labels.id_column, label_column, classes), or data.require_labels=false "
                "to only predict",
                where="data.labels.file",
            )
        return None
    try:
        path = resolve_label_file(spec, patient_root, root)
        assert path is not None
        return LabelTable.load(path, spec)
    except UnusableLabelTable as err:
        if require_labels:
            hint = "; for a cohort without labels set data.require_labels=false"
            raise UnusableLabelTable(err.problem + hint, err.patient, err.where) from None
        logger.warning("%s; treating the cohort as unlabelled", err)
        return None



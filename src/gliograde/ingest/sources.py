"""What is in a hospital's SRC folder: patients, their series, and which series is which modality.

DICOM files (any nesting, any or no extension) are grouped by PatientID, then
SeriesInstanceUID; NIfTI files make one patient per top folder of SRC (files directly in SRC:
one patient named after SRC). Only headers are read here, so every patient's problems are found
before any pixel data is decoded.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path

import pydicom

from gliograde.data.errors import DataError
from gliograde.errors import ConfigError
from gliograde.ingest.nifti_scans import check_nifti_header
from gliograde.ingest.series_rules import MODALITIES, SKIP, SeriesRules
from gliograde.ingest.dicom_patient import _dicom_patient, _is_image, _read_dicom_header
from gliograde.ingest.scans import ScanPatient, ScanSeries, _Found, _resolve

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(original: str) -> str:
    """A folder name made of letters, digits, ``.``, ``_`` and ``-`` (never empty, ``.`` or ``..``)."""
    cleaned = _UNSAFE.sub("_", original.strip()).strip("_")
    cleaned = re.sub(r"^\.+", lambda m: "_" * len(m.group()), cleaned)
    return cleaned[:128] or "patient"


def check_source(src: Path, out: Path | None = None) -> None:
    """One line if SRC is not a folder, or OUT is SRC or lies inside it."""
    src = Path(src)
    if not src.exists():
        raise DataError("does not exist; give the folder holding the hospital's scans", where=src)
    if not src.is_dir():
        raise DataError("is not a folder; give the folder holding the hospital's scans", where=src)
    if out is not None:
        s, o = src.resolve(), Path(out).resolve()
        if o == s or s in o.parents:
            raise DataError(f"the output folder {out} lies inside the source folder; choose an "
                            "output folder outside it", where=src)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _nifti_stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def _nifti_patient(patient: str, original: str, folder: Path, paths: list[Path], rules: SeriesRules,
                   files: Mapping[str, str | None], notes: list[str]) -> ScanPatient:
    found: list[_Found] = []
    series: dict[str, list[ScanSeries]] = defaultdict(list)
    relative = {p: p.relative_to(folder).as_posix() for p in paths}
    forced: dict[Path, str] = {}
    for modality, glob in files.items():
        if not glob:
            continue
        hits = [p for p in paths if fnmatchcase(relative[p].lower(), glob.lower())
                or fnmatchcase(p.name.lower(), glob.lower())]
        if not hits:
            raise DataError(f"files.{modality}={glob!r} matches none of: "
                            + ", ".join(relative.values()), patient, folder)
        for hit in hits:
            if hit in forced:
                raise DataError(f"files.{forced[hit]} and files.{modality} both match "
                                f"{relative[hit]!r}; make the globs name different files", patient, folder)
            forced[hit] = modality
    for path in paths:
        label = repr(relative[path])
        if path in forced:
            modality, why = forced[path], ""
        else:
            modality = rules.classify(_nifti_stem(path))
            why = ""
            if modality == SKIP:
                modality, why = None, "skip rule"
            elif modality is None:
                why = "no rule matches"
            elif files.get(modality):
                modality, why = None, f"files.{modality} names another file"
        found.append(_Found(label, path.name, modality, why))
        if modality is None:
            notes.append(f"left out {label}: {why}")
            continue
        details = {"patient_id_original": original} if original != patient else {}
        series[modality].append(ScanSeries(modality, "nifti", relative[path], None, (path,),
                                           details, patient))
    chosen = _resolve(patient, "NIfTI", found, series, notes, folder)
    for scan in chosen.values():  # only the files used are checked
        scan.details.update(check_nifti_header(scan.files[0], patient))
    return ScanPatient(patient, chosen, notes, folder)


def find_patients(src: Path, rules: SeriesRules, files: Mapping[str, str | None] | None = None
                  ) -> list[ScanPatient]:
    """Every patient of SRC with one checked series per modality, sorted by id.

    One line (:class:`DataError`) for: SRC empty or holding no DICOM/NIfTI, a patient without a
    usable MR series, a missing modality (t1ce may be missing), two scans matching one modality,
    a bad series or NIfTI header (gaps, 4D, mixed stacks, undecodable transfer syntax, shear...),
    two ids that become one folder name. Non-image objects, localisers, derived and 2D-only
    series, skip-rule matches and files that are neither DICOM nor NIfTI are left out with a note.
    """
    src = Path(src)
    check_source(src)
    files = dict(files or {})
    unknown = sorted(set(files) - set(MODALITIES))
    if unknown:
        raise ConfigError(f"files.{unknown[0]}: unknown modality; use one of {', '.join(MODALITIES)}")
    every = sorted(p for p in src.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(src).parts))
    if not every:
        raise DataError("is empty: no files found; give the folder holding the hospital's scans", where=src)
    nifti: dict[Path, list[Path]] = defaultdict(list)  # patient folder -> files
    dicom: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    ignored: list[tuple[Path, str]] = []  # (file, why)
    fallback_notes: dict[str, str] = {}
    for path in every:
        top = path.relative_to(src).parts
        if _is_nifti(path):
            nifti[src / top[0] if len(top) > 1 else src].append(path)
            continue
        ds = _read_dicom_header(path)
        if ds is None:
            ignored.append((path, "neither DICOM nor NIfTI"))
            continue
        pid = str(ds.get("PatientID", "") or "").strip()
        if not pid and not _is_image(ds):  # a DICOMDIR or another object of no patient
            ignored.append((path, "non-image DICOM of no patient"))
            continue
        if not pid:
            pid = top[0] if len(top) > 1 else src.name
            fallback_notes[pid] = f"DICOM files without PatientID take the folder name {pid!r} as id"
        dicom[pid].append((path, ds))
    if not nifti and not dicom:
        shown = ", ".join(p.relative_to(src).as_posix() for p, _ in ignored[:3])
        raise DataError(f"holds no DICOM or NIfTI files ({len(ignored)} other file(s), e.g. {shown}); "
                        "give the folder holding the hospital's scans", where=src)
    originals: dict[str, str] = {}
    kinds: dict[str, str] = {}
    for original, kind in [*((o, "DICOM") for o in dicom), *((f.name, "NIfTI") for f in nifti)]:
        patient = safe_id(original)
        if patient in originals and originals[patient] == original:
            raise DataError("both DICOM series (PatientID) and NIfTI files (folder name) carry this "
                            "id; keep one kind of scan for it in SRC", patient)
        if patient in originals:
            raise DataError(f"ids {originals[patient]!r} ({kinds[patient]}) and {original!r} ({kind}) "
                            f"both become the folder name {patient!r}; give one patient's scans "
                            "another PatientID or folder", patient)
        originals[patient], kinds[patient] = original, kind
    patients: list[ScanPatient] = []
    for original, datasets in sorted(dicom.items()):
        patient = safe_id(original)
        notes = [fallback_notes[original]] if original in fallback_notes else []
        if patient != original:
            notes.append(f"PatientID {original!r} is not a safe folder name; id {patient!r} is used")
        scan = _dicom_patient(patient, original, datasets, rules, notes)
        scan.details["patient_id_original"] = original
        patients.append(scan)
    for folder, paths in sorted(nifti.items()):
        original = folder.name
        patient = safe_id(original)
        notes = [] if patient == original else [
            f"folder name {original!r} is not a safe id; id {patient!r} is used"]
        scan = _nifti_patient(patient, original, folder, paths, rules, files, notes)
        scan.details["patient_id_original"] = original
        patients.append(scan)
    by_owner: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path, why in ignored:
        top = path.relative_to(src).parts
        home = src / top[0] if len(top) > 1 else src
        name = path.relative_to(src).as_posix()
        owners = [p for p in patients if p.source == home
                  or (home != src and (home in p.source.parents or p.source in home.parents))]
        for owner in owners:
            by_owner[owner.patient_id, why].append(name)
        if not owners:
            log.warning("ignored %s: %s", name, why)
    for owner in patients:
        for (patient_id, why), names in sorted(by_owner.items()):
            if patient_id == owner.patient_id:
                owner.notes.append(f"ignored {len(names)} file(s), {why}: "
                                   + ", ".join(names[:5]) + (", ..." if len(names) > 5 else ""))
    return sorted(patients, key=lambda p: p.patient_id)

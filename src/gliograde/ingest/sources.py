"""What is in a hospital's SRC folder: patients, their series, and which series is which modality.

DICOM files (any nesting, any or no extension) are grouped by PatientID, then
SeriesInstanceUID; NIfTI files make one patient per top folder of SRC (files directly in SRC:
one patient named after SRC). Only headers are read here, so every patient's problems are found
before any pixel data is decoded.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from gliograde.data.errors import DataError
from gliograde.errors import ConfigError
from gliograde.ingest.dicom_volume import (
    SeriesGeometry,
    SliceHeader,
    check_series,
    decode_series,
    read_dicom_series,
)
from gliograde.ingest.nifti_scans import check_nifti_header, read_nifti_scan
from gliograde.ingest.series_rules import MODALITIES, SKIP, SeriesRules

log = logging.getLogger(__name__)

OPTIONAL = frozenset({"t1ce"})  # a patient may lack it: the caller registers to another modality
MIN_SLICES = 3
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NON_IMAGE_MODALITIES = frozenset({"SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO",
                                  "REG", "DOC", "FID", "AU", "ECG", "HD", "PLAN"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(original: str) -> str:
    """A folder name made of letters, digits, ``.``, ``_`` and ``-`` (never empty, ``.`` or ``..``)."""
    cleaned = _UNSAFE.sub("_", original.strip()).strip("_")
    cleaned = re.sub(r"^\.+", lambda m: "_" * len(m.group()), cleaned)
    return cleaned[:128] or "patient"


@dataclass
class ScanSeries:
    """One scan of one patient assigned to a modality; :meth:`read` decodes it."""

    modality: str
    kind: Literal["dicom", "nifti"]
    description: str
    uid: str | None
    files: tuple[Path, ...]
    details: dict[str, Any]
    patient_id: str = ""

    def read(self) -> sitk.Image:
        """The scan as a 3D SimpleITK image in its scanner's physical (LPS) space."""
        if self.kind == "nifti":
            return read_nifti_scan(self.files[0], self.patient_id)
        return read_dicom_series(self.files, self.patient_id, self.description)


@dataclass
class ScanPatient:
    """A patient of SRC: one series per modality found (``t1ce`` may be missing)."""

    patient_id: str
    series: dict[str, ScanSeries]
    notes: list[str]
    source: Path
    details: dict[str, Any] = field(default_factory=dict)


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


def _read_dicom_header(path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM file, None if the file is not DICOM; one line if it is damaged."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        ds = None
        pass  # no preamble: maybe a raw dataset starting with group 0008
    except Exception as err:  # pydicom raises many types on a damaged file
        raise DataError(f"unreadable DICOM file ({type(err).__name__}: {err}); remove it or copy "
                        "it again", where=path) from err
    if ds is not None:
        sop_class = UID(str(ds.file_meta.get("MediaStorageSOPClassUID", "")))
        if sop_class.name.endswith("Image Storage") and ("Rows" not in ds or "Columns" not in ds):
            # pydicom stops quietly at the end of a file cut short inside its header
            raise DataError(f"damaged DICOM file: {sop_class.name} without Rows/Columns "
                            "(truncated?); remove it or copy it again", where=path)
        return ds
    with open(path, "rb") as handle:
        start = handle.read(4)
    if len(start) < 4 or start[:2] != b"\x08\x00":
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return None
    return ds if "SOPClassUID" in ds or "Modality" in ds else None


def _number(ds: pydicom.Dataset) -> int | None:
    """SeriesNumber as an int, None where it is missing or not a number."""
    try:
        return int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):
        return None


def _is_image(ds: pydicom.Dataset) -> bool:
    modality = str(ds.get("Modality", "") or "").upper()
    return modality not in NON_IMAGE_MODALITIES and "Rows" in ds and "Columns" in ds


def _describe(ds: pydicom.Dataset) -> str:
    text = str(ds.get("SeriesDescription", "") or "").strip()
    return text or str(ds.get("ProtocolName", "") or "").strip() or f"series {ds.get('SeriesNumber', '?')}"


@dataclass
class _Found:
    """One candidate scan before modalities are settled."""

    label: str  # how the error lines name it
    text: str  # what a rule for it would match: SeriesDescription or file name
    modality: str | None
    why: str  # "" when usable, else why it was left out


def _resolve(patient: str, kind: str, found: list[_Found], series: dict[str, list[ScanSeries]],
             notes: list[str], where: Path) -> dict[str, ScanSeries]:
    """One series per modality, or one line for a missing (not t1ce) or ambiguous modality."""
    def option(modality: str, example: str | None) -> str:
        if kind == "NIfTI":
            return f"files.{modality}=" + (f"'{example}'" if example else "GLOB")
        return f"'ingest.series.{modality}=" + (f'["{example}"]' if example else "[GLOB,...]") + "'"

    listing = "; ".join(f"{f.label} -> {f.modality or f.why}" for f in found) or "nothing"
    chosen: dict[str, ScanSeries] = {}
    for modality in MODALITIES:
        matches = series.get(modality, [])
        if len(matches) > 1:
            names = ", ".join(repr(s.description) + (f" (series {s.details['series_number']})"
                                                       if s.details.get("series_number") is not None else "")
                              for s in matches)
            raise DataError(
                f"{len(matches)} {kind} scans match {modality}: {names}; name the one to use with "
                f"{option(modality, matches[0].description)} or remove the others from SRC", patient, where)
        if matches:
            chosen[modality] = matches[0]
        elif modality in OPTIONAL:
            notes.append(f"no {modality} scan found; the patient has no {modality}")
        else:
            unmatched = [f.text for f in found if f.why == "no rule matches"]
            raise DataError(
                f"no {modality} scan among: {listing}; add a rule that matches it, e.g. "
                f"{option(modality, unmatched[0] if len(unmatched) == 1 else None)}", patient, where)
    return chosen


def _dicom_patient(patient: str, original: str, datasets: list[tuple[Path, pydicom.Dataset]],
                   rules: SeriesRules, notes: list[str]) -> ScanPatient:
    non_image = Counter()
    other_modality: dict[str, str] = {}
    by_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path, ds in datasets:
        modality = str(ds.get("Modality", "") or "").upper()
        if not _is_image(ds):
            non_image[modality or "no pixel data"] += 1
        elif modality != "MR":
            other_modality.setdefault(str(ds.get("SeriesInstanceUID", path)), f"{modality} {_describe(ds)!r}")
        else:
            by_series[str(ds.get("SeriesInstanceUID", "") or f"no-uid:{path.parent}")].append((path, ds))
    if non_image:
        notes.append("left out non-image DICOM objects: "
                     + ", ".join(f"{kind} x{n}" for kind, n in sorted(non_image.items())))
    if other_modality:
        notes.append("left out series that are not MR: " + ", ".join(sorted(other_modality.values())))
    if not by_series:
        kinds = ", ".join([*(f"non-image {k}" for k in sorted(non_image)), *sorted(other_modality.values())])
        raise DataError(f"no MR image series, only {kinds}; copy the patient's MR series into SRC", patient,
                        os.path.commonpath([str(p.parent) for p, _ in datasets]))
    found: list[_Found] = []
    series: dict[str, list[ScanSeries]] = defaultdict(list)
    for uid, items in sorted(by_series.items(), key=lambda kv: (_number(kv[1][0][1]) or 0, kv[0])):
        ds = items[0][1]
        description = _describe(ds)
        number = _number(ds)
        label = f"{description!r} (series {number})"
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        why = ""
        modality = None
        if "LOCALIZER" in image_type:
            why = "localiser"
        elif image_type[:1] == ["DERIVED"]:
            why = "derived image"
        elif any(int(d.get("NumberOfFrames", 1) or 1) > 1 for _, d in items):
            why = "multi-frame (enhanced) DICOM, not read; export as classic single-frame images"
        else:
            modality = rules.classify(ds.get("SeriesDescription"), ds.get("ProtocolName"))
            if modality == SKIP:
                modality, why = None, "skip rule"
            elif len({str(d.get("SOPInstanceUID", p)) for p, d in items}) < MIN_SLICES:
                modality, why = None, f"2D-only ({len(items)} slice(s))"
            elif modality is None:
                why = "no rule matches"
        found.append(_Found(label, description, modality, why))
        if modality is None:
            notes.append(f"left out series {label}: {why}")
            continue
        details = {"series_number": number,
                   "protocol_name": str(ds.get("ProtocolName", "") or ""),
                   "manufacturer": str(ds.get("Manufacturer", "") or ""),
                   "image_type": "\\".join(image_type)}
        if original != patient:
            details["patient_id_original"] = original
        headers = tuple(SliceHeader.from_dataset(d, p) for p, d in items)
        series[modality].append(_DicomSeries(modality, "dicom", description, uid,
                                             tuple(h.path for h in headers), details, patient, headers))
    source = Path(os.path.commonpath([str(p.parent) for p, _ in datasets]))
    chosen = _resolve(patient, "DICOM", found, series, notes, source)
    for scan in chosen.values():  # only the series used are checked: a rule may leave a bad one out
        geometry = check_series(scan.geometry, patient, scan.description)
        if geometry.duplicates_dropped:
            notes.append(f"series {scan.description!r} (series {scan.details['series_number']}): "
                         f"{geometry.duplicates_dropped} copies of the same slice kept once")
        scan.geometry, scan.files = geometry, geometry.files
        scan.details.update(geometry.details())
    return ScanPatient(patient, chosen, notes, source)


@dataclass
class _DicomSeries(ScanSeries):
    """A DICOM series whose headers were checked while SRC was searched: read() decodes it."""

    geometry: Any = None  # the slice headers, then their checked SeriesGeometry

    def read(self) -> sitk.Image:
        if not isinstance(self.geometry, SeriesGeometry):
            return super().read()
        return decode_series(self.geometry, self.patient_id, self.description)


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

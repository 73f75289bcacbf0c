"""A patient's DICOM series: headers read without pixels, image series told from the rest, and each
series matched to a modality by the series rules."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from gliograde.data.errors import DataError
from gliograde.ingest.dicom_volume import SeriesGeometry, SliceHeader, check_series, decode_series
from gliograde.ingest.series_rules import SKIP, SeriesRules
from gliograde.ingest.scans import MIN_SLICES, NON_IMAGE_MODALITIES, ScanPatient, ScanSeries, _Found, _resolve


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

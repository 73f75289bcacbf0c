"""A patient's scans as ingestion finds them: each series (DICOM or NIfTI) with what it was matched
to, and the one-line choice asked for when a modality matches several series or none."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import SimpleITK as sitk

from gliograde.data.errors import DataError
from gliograde.ingest.dicom_volume import read_dicom_series
from gliograde.ingest.nifti_scans import read_nifti_scan
from gliograde.ingest.series_rules import MODALITIES

OPTIONAL = frozenset({"t1ce"})  # a patient may lack it: the caller registers to another modality
MIN_SLICES = 3
NON_IMAGE_MODALITIES = frozenset({"SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO",
                                  "REG", "DOC", "FID", "AU", "ECG", "HD", "PLAN"})


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

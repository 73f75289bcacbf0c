"""Ingest every patient of a source folder into a folder of model-space patients: the volumes in
the model's naming, ``ingest.json`` (provenance and quality), the transforms and a picture."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import SimpleITK as sitk

from gliograde.data.errors import DataError
from gliograde.inference.calibration import file_sha256
from gliograde.ingest.figures import registration_figure
from gliograde.ingest.model_space import to_model_space
from gliograde.ingest.provenance import library_versions, write_record, write_transforms
from gliograde.ingest.quality import check_quality
from gliograde.ingest.settings import IngestSettings
from gliograde.ingest.scans import ScanPatient
from gliograde.ingest.target import ModelSpace

log = logging.getLogger(__name__)

SUMMARY_FILE = "ingest.csv"
FIGURE_FILE = "registration.png"
BRAIN_FILE_SUFFIX = "_brain.nii.gz"
QC_PASSED = "passed"
SUMMARY_COLUMNS = ["patient_id", "qc", "brain_ml", "reference", "source", "seconds", "notes"]


def ingest_patients(
    patients: Sequence[ScanPatient],
    space: ModelSpace,
    settings: IngestSettings,
    out: Path,
    skipped: list[DataError] | None = None,
) -> pd.DataFrame:
    """Ingest ``patients`` into ``out/<id>/`` and write ``out/ingest.csv``; return that table.

    With a ``skipped`` list (``on_error=skip``), a patient whose scans cannot be read is added
    to it instead of stopping the others. ``out`` is expected to be staged by the caller.
    """
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, patient in enumerate(patients, start=1):
        print(f"Ingesting {patient.patient_id} ({number}/{len(patients)})", flush=True)
        try:
            rows.append(ingest_patient(patient, space, settings, out / patient.patient_id))
        except DataError as err:
            if skipped is None:
                raise
            skipped.append(err)
            log.warning("Skipped %s", err)
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    table.to_csv(out / SUMMARY_FILE, index=False)
    return table


def ingest_patient(patient: ScanPatient, space: ModelSpace, settings: IngestSettings, folder: Path) -> dict[str, Any]:
    """Read ``patient``'s series, bring them into ``space`` and write its folder; return its
    summary row."""
    started = time.perf_counter()
    images = {modality: series.read() for modality, series in patient.series.items()}
    brain_mask = _user_brain_mask(patient, settings)
    try:
        ingested = to_model_space(
            images, space.template, reference=settings.reference, brain_mask=brain_mask, n4=settings.n4
        )
    except DataError as err:
        if err.patient is not None:
            raise
        raise DataError(err.problem, patient.patient_id, err.where or patient.source) from None
    quality = check_quality(ingested, space.template, settings.thresholds)
    folder.mkdir(parents=True)
    written = {}
    for modality in (m for m in space.modalities if m in ingested.volumes):
        name = space.file_name(modality, patient.patient_id)
        sitk.WriteImage(ingested.volumes[modality], str(folder / name), True)
        written[modality] = name
    brain_name = f"{patient.patient_id}{BRAIN_FILE_SUFFIX}"
    sitk.WriteImage(ingested.brain, str(folder / brain_name), True)
    transforms = write_transforms(ingested.transforms, folder)
    figure = registration_figure(
        ingested.volumes, _template_brain(space), f"{patient.patient_id}: the template's brain outline"
    )
    _save(figure, folder / FIGURE_FILE)
    notes = [*patient.notes, *ingested.notes]
    missing = [m for m in space.modalities if m not in ingested.volumes]
    if missing:
        notes.append(f"no {', '.join(missing)} series: the model needs it, so this patient cannot be graded")
    seconds = time.perf_counter() - started
    write_record(
        folder,
        {
            "patient_id": patient.patient_id,
            "source": str(patient.source),
            "series": {m: _series_record(s) for m, s in patient.series.items()},
            "volumes": written,
            # what the quality check judged: predict refuses volumes changed since
            "volume_sha256": {m: file_sha256(folder / name) for m, name in written.items()},
            "brain_mask": brain_name,
            "reference": ingested.reference,
            "template": {"folder": space.template_source, "fingerprint": space.template.fingerprint, **space.template.meta},
            "model": space.model,
            "transforms": transforms,
            "qc": {
                "passed": quality.passed,
                "failed": list(quality.failed),
                "brain_ml": quality.brain_ml,
                # left out of the brain: a series' thick slices saw it mixed with what surrounds it
                "partial_volume_ml": round(float(ingested.scores.get("partial_volume_ml", 0.0)), 1),
                "thresholds": settings.thresholds,
                "checks": quality.rows.to_dict("records"),
            },
            "settings": {"n4": settings.n4, "reference": settings.reference, "brain_mask": settings.brain_mask},
            "notes": notes,
            "libraries": library_versions(),
            "seconds": round(seconds, 1),
            "figure": FIGURE_FILE,
        },
    )
    qc = QC_PASSED if quality.passed else "; ".join(quality.failed)
    if not quality.passed:
        log.warning("Patient %s: quality check failed: %s", patient.patient_id, qc)
    return {
        "patient_id": patient.patient_id,
        "qc": qc,
        "brain_ml": round(float(quality.brain_ml), 1),
        "reference": ingested.reference,
        "source": _source_kind(patient),
        "seconds": round(seconds, 1),
        "notes": "; ".join(notes),
    }


def format_summary(table: pd.DataFrame, out: Path) -> str:
    """The closing lines of an ingestion: one per patient, then where it went."""
    if table.empty:
        return f"No patient ingested. Output: {out}"
    shown = table[["patient_id", "qc", "brain_ml", "reference", "source", "seconds"]].to_string(index=False)
    failed = int((table["qc"] != QC_PASSED).sum())
    verdict = (
        f"{len(table) - failed} of {len(table)} passed the quality check"
        + (f"; {failed} failed (see {SUMMARY_FILE} and each {FIGURE_FILE}): not graded unless qc=warn" if failed else "")
    )
    return f"{shown}\n{verdict}\nOutput: {out}"


def _user_brain_mask(patient: ScanPatient, settings: IngestSettings) -> sitk.Image | None:
    """The brain mask ``ingest.brain_mask=GLOB`` finds in a NIfTI patient's folder, if asked."""
    if not settings.brain_mask:
        return None
    folders = {f.parent for s in patient.series.values() for f in s.files}
    matches = sorted({p for folder in folders for p in folder.glob(settings.brain_mask)})
    if len(matches) != 1:
        raise DataError(
            f"ingest.brain_mask={settings.brain_mask} matches {len(matches)} files here, expected one",
            patient.patient_id,
            ", ".join(str(f) for f in sorted(folders)),
        )
    from gliograde.ingest.nifti_scans import read_nifti_scan

    return read_nifti_scan(matches[0], patient.patient_id)


def _template_brain(space: ModelSpace) -> sitk.Image:
    """The template's brain probability on the model's grid (what the figure outlines)."""
    return sitk.Resample(space.template.brain, space.template.grid, sitk.Transform(), sitk.sitkLinear, 0.0)


def _series_record(series) -> dict[str, Any]:
    return {
        "kind": series.kind,
        "description": series.description,
        "uid": series.uid,
        "files": len(series.files),
        "first_file": str(series.files[0]) if series.files else None,
        **series.details,
    }


def _source_kind(patient: ScanPatient) -> str:
    kinds = sorted({s.kind for s in patient.series.values()})
    return "+".join(kinds)


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=80)
    plt.close(figure)

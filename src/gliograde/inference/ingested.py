"""predict.py and ingested scans: ``ingest=true`` brings hospital scans into the model's space
first, and every patient folder with an ``ingest.json`` has its quality check read: a failed
one is flagged (``qc`` column) and, unless ``qc=warn``, not graded."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gliograde.data.errors import DataError
from gliograde.errors import ConfigError
from gliograde.inference.inputs import PatientFiles, from_root

log = logging.getLogger(__name__)

QC_MODES = ("exclude", "warn")
QC_FAILED_RULE = "quality check failed"
INGESTED_FOLDER = "ingested"


@dataclass
class IngestPlan:
    """Hospital scans found and named, ready to be ingested into the model's space."""

    settings: Any
    space: Any
    scans: list

    @property
    def patient_ids(self) -> list[str]:
        return [scan.patient_id for scan in self.scans]

    def run(self, out: Path, skipped: list[DataError] | None) -> list[PatientFiles]:
        """Ingest into ``out/ingested`` and return the model-space patients written there."""
        from gliograde.ingest.cohort import ingest_patients

        folder = out / INGESTED_FOLDER
        table = ingest_patients(self.scans, self.space, self.settings, folder, skipped)
        if table.empty:
            raise DataError("no patient could be ingested (see above)", where=folder)
        return from_root(folder, self.space.naming, {}, list(self.space.modalities), skipped)


def check_qc_mode(cfg: DictConfig) -> str:
    """``qc=exclude|warn``."""
    mode = str(cfg.get("qc", "exclude"))
    if mode not in QC_MODES:
        raise ConfigError(f"qc={mode}: must be one of {list(QC_MODES)} (warn grades a failed patient and flags it)")
    return mode


def plan_ingest(cfg: DictConfig, model, patterns: Mapping[str, str | None]) -> IngestPlan:
    """Settings, the model's space and every patient's series, found before any image is decoded."""
    from gliograde.ingest.settings import read_settings
    from gliograde.ingest.sources import check_source, find_patients
    from gliograde.ingest.target import model_space

    if cfg.manifest:
        raise ConfigError("ingest=true reads input=DIR (DICOM or NIfTI scans); a manifest names model-space files")
    if cfg.get("resample"):
        raise ConfigError("ingest=true already puts the scans on the model's grid: drop resample=true")
    settings = read_settings(cfg.ingest, {k: v for k, v in patterns.items() if k != "mask"})
    src = Path(str(cfg.input)).expanduser()
    check_source(src, Path(str(cfg.output_dir)).expanduser() if cfg.output_dir else Path("outputs/predict"))
    space = model_space(str(cfg.ckpt), model.contract, settings.template)
    print(f"Ingesting {src} into the model's space (template: {space.template_source})")
    return IngestPlan(settings, space, find_patients(src, settings.rules, settings.files))


TEMPLATE_CHECK = "template"


class TemplateCheck:
    """Whether each ingested folder was brought into the template of the model that grades it.
    Two models' templates differ in anatomy and pose even on one grid, so a patient ingested for
    another model is flagged like a failed quality check. The model's template is read once, when
    the first ingested patient comes; ``ingest.template=`` names another one."""

    def __init__(self, cfg: DictConfig, contract: Mapping[str, Any], plan: IngestPlan | None = None):
        self._cfg, self._contract = cfg, contract
        self._expected: str | None = None if plan is None else plan.space.template.fingerprint
        self._source: str | None = None if plan is None else plan.space.template_source
        self._unknown: str | None = None

    def _model_template(self) -> str | None:
        if self._expected is None and self._unknown is None:
            from gliograde.ingest.target import model_space
            from gliograde.inference.models import ModelSourceError

            template = OmegaConf.select(self._cfg, "ingest.template", default=None)
            try:
                space = model_space(str(self._cfg.ckpt), self._contract, Path(str(template)).expanduser() if template else None)
            except (ModelSourceError, DataError) as err:  # no template at hand: graded, and said so
                self._unknown = str(err)
                log.warning("Ingested patients are graded without checking their template: %s", err)
                return None
            self._expected, self._source = space.template.fingerprint, space.template_source
        return self._expected

    def checked(self, record: dict[str, Any] | None) -> dict[str, Any] | None:
        """``record`` with a failed ``template`` check added when its patient was ingested into
        another template than the model's (or before templates were fingerprinted)."""
        if record is None:
            return None
        expected = self._model_template()
        if expected is None:
            return record
        found = (record.get("template") or {}).get("fingerprint")
        if found == expected:
            return record
        where = (record.get("template") or {}).get("folder", "an unrecorded template")
        why = (
            f"{TEMPLATE_CHECK}: ingested into {where}, not this model's template ({self._source}); "
            "ingest again with this model"
            if found
            else f"{TEMPLATE_CHECK}: ingested before templates were fingerprinted; ingest again with this model"
        )
        qc = dict(record["qc"])
        qc["passed"], qc["failed"] = False, [*qc.get("failed", []), why]
        return {**record, "qc": qc}


def ingestion_record(files: PatientFiles) -> dict[str, Any] | None:
    """The ``ingest.json`` beside a patient's volumes, if the patient was ingested."""
    from gliograde.ingest.provenance import read_record

    folder = next(iter(files.modalities.values())).parent
    return read_record(folder, files.patient_id)


def qc_text(record: Mapping[str, Any] | None) -> str | None:
    """``passed``, the failed checks, or None for a patient that was not ingested."""
    if record is None:
        return None
    qc = record["qc"]
    return "passed" if qc["passed"] else "; ".join(qc["failed"]) or "failed"


def registration_figure_copy(files: PatientFiles, record: Mapping[str, Any], out: Path, stem: str) -> dict[str, str]:
    """The ingestion's registration picture, copied beside predict's own figures."""
    folder = next(iter(files.modalities.values())).parent
    source = folder / str(record.get("figure", ""))
    if not record.get("figure") or not source.is_file():
        return {}
    name = f"{stem}_registration.png"
    if source.resolve() != (out / name).resolve():
        shutil.copyfile(source, out / name)
    return {"registration": name}


def qc_failed_row(files: PatientFiles, record: Mapping[str, Any], classes: list[str], figures: dict[str, str]) -> dict[str, Any]:
    """The row of a patient whose ingestion failed its quality check: reported, not graded."""
    text = qc_text(record)
    log.warning("Patient %s: not graded, its ingestion failed the quality check: %s (qc=warn grades it)", files.patient_id, text)
    return {
        "patient_id": files.patient_id,
        "probabilities": dict.fromkeys(classes),
        "prediction": QC_FAILED_RULE,
        "n_slices": 0,
        "slice_rule": QC_FAILED_RULE,
        "tumour_ml": None,
        "predicted_mask": None,
        "note": f"quality check failed: {text} (qc=warn grades it anyway)",
        "qc": text,
        "resampled": None,
        "slice_index": [],
        "slice_probabilities": [],
        "files": {**{m: str(p) for m, p in files.modalities.items()}, "mask": str(files.mask or "")},
        "fingerprints": {},
        "order_fingerprints": {},
        "figures": figures,
    }

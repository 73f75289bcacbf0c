"""The space a model learned in: its template (from ``ingest.template=``, an export's, or built
from a run's training patients), its modalities and its file naming."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gliograde.data.errors import DataError
from gliograde.ingest.template import TEMPLATE_FILE, Template, load_template, run_template
from gliograde.inference.calibration import file_sha256
from gliograde.inference.models import CARD_FILE, ModelSourceError, read_card

TEMPLATE_FOLDER = "template"
"""Where a run (``RUN/template``, built by ``run_template``) and an export keep their template."""


@dataclass(frozen=True)
class ModelSpace:
    """Where ingested volumes go: the template (whose ``grid`` is the model's voxel grid), the
    model's modalities and the names its files must have."""

    template: Template
    template_source: str
    modalities: tuple[str, ...]
    naming: Mapping[str, Any]
    model: str

    def file_name(self, modality: str, patient_id: str) -> str:
        """``{id}_flair.nii.gz`` (the model's naming) for ``modality`` of ``patient_id``."""
        return self.naming["modality_files"][modality].format(id=patient_id) + ".nii.gz"


def model_space(model: str | Path, contract: Mapping[str, Any], template: Path | None = None) -> ModelSpace:
    """The space of the model at ``model`` (a run directory, checkpoint or export folder) whose
    input contract is ``contract``, with ``template`` (a template folder) instead of the model's
    own when given."""
    source = Path(model).expanduser()
    if template is not None:
        found, origin = load_template(template), str(template)
    elif (source / CARD_FILE).is_file():
        found, origin = _export_template(source), str(source / TEMPLATE_FOLDER)
    else:
        run = _run_of(source)
        if run is None:
            raise ModelSourceError(
                f"model={model}: no template (an export without {TEMPLATE_FOLDER}/, or a checkpoint outside its "
                "run): give ingest.template=FOLDER, or the run directory"
            )
        found, origin = run_template(run), str(run / TEMPLATE_FOLDER)
    _check_grid(found, contract, origin)
    return ModelSpace(found, origin, tuple(contract["modalities"]), contract["naming"], str(source))


def _export_template(folder: Path) -> Template:
    """The template an export bundles, checked against the sealed card's record of it."""
    section = read_card(folder).get("template")
    if not section:
        raise ModelSourceError(
            f"model={folder}: this export bundles no template (exported without its training patients at hand): "
            "give ingest.template=FOLDER, or re-export the run"
        )
    record = folder / section["folder"] / TEMPLATE_FILE
    if not record.is_file() or file_sha256(record) != section["record_sha256"]:
        raise ModelSourceError(
            f"model={folder}: its template is not the one the model card sealed ({record} changed or missing): "
            "re-export the run"
        )
    return load_template(folder / section["folder"])


def _run_of(source: Path) -> Path | None:
    """The run directory of a run directory or of one of its checkpoints."""
    for candidate in (source, source.parent.parent):
        if (candidate / "checkpoints").is_dir() and (candidate / "splits.csv").is_file():
            return candidate
    return None


def _check_grid(template: Template, contract: Mapping[str, Any], origin: str) -> None:
    """The template's grid must be the one the model's contract names."""
    grid = contract.get("grid") or {}
    size = [int(s) for s in template.grid.GetSize()]
    spacing = [round(float(s), 4) for s in template.grid.GetSpacing()]
    wanted_size = [int(s) for s in grid.get("shape", size)]
    wanted_spacing = [round(float(s), 4) for s in grid.get("spacing", spacing)]
    if size != wanted_size or spacing != wanted_spacing:
        raise DataError(
            f"the template's grid {size} at {spacing} mm is not the model's ({wanted_size} at {wanted_spacing} mm): "
            "give a template built for this model",
            where=origin,
        )

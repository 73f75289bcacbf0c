"""``predict.py``: grade new patients with a trained (or exported) model, no labels needed.

Per patient: slice probabilities, their mean, the call at the threshold, a slice-probability
curve and a Grad-CAM of the most decisive slice. Tables: predictions.csv and predictions.json.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from gliograde.files.atomic import write_frame, write_text
from gliograde.data.pipeline.cohort_tables import skipped_table
from gliograde.data.errors import DataError
from gliograde.data.discovery.identity import content_matches, fingerprint_columns, fingerprint_table
from gliograde.data.discovery.specs import MODALITIES
from gliograde.data.batches.splits import read_splits_table
from gliograde.errors import ConfigError
from gliograde.evaluation.report_html import prediction_page, write_page
from gliograde.evaluation.summary import prediction_headline, prediction_notes
from gliograde.inference.figures import gradcam_figure, outline_figure, safe_name, save_png, slice_curve
from gliograde.inference.ingested import (
    QC_FAILED_RULE,
    IngestPlan,
    TemplateCheck,
    check_qc_mode,
    ingestion_record,
    plan_ingest,
    qc_failed_row,
    qc_text,
    registration_figure_copy,
)
from gliograde.inference.inputs import PatientFiles, from_input, from_manifest
from gliograde.inference.models import open_model
from gliograde.inference.recipe import PREDICT_AGGREGATE
from gliograde.inference.recipe_choice import Applied, check_predict_options, resolve
from gliograde.inference.predicted_tumours import NO_TUMOUR_RULE, NoTumourFound, TumourPredictor
from gliograde.inference.stream import load_patient
from gliograde.inference.tta import check_tta_for
from gliograde.contract.mask_free import check_mask_free, mask_free_note, refuse_missing_masks
from gliograde.files.output_folder import staged_folder
from gliograde.models.patient_scores import patient_log_probs
from gliograde.segmentation.predicted import grid_spacing, mask_ml

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
# What predict writes into its folder: an existing folder holding anything else is not replaced.
PREDICT_FILES = ("predictions.csv", "predictions.json", "report.html", "skipped.csv", "*.png")
NOT_GRADED = (NO_TUMOUR_RULE, QC_FAILED_RULE)


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Grade every patient ``cfg`` names; return what predictions.json holds."""
    patterns = _check_options(cfg)
    model = open_model(str(cfg.ckpt), follow_recipe=cfg.recipe != "none")
    contract = model.contract
    applied = resolve(model, cfg)  # the model's recipe, and the options that agree with it
    print(applied.line())
    if applied.stale_export:
        log.warning(applied.stale_export)
    check_tta_for(applied.tta, contract)  # before any patient is decoded
    predictor = _tumour_predictor(cfg, model)
    skipped: list[DataError] | None = [] if cfg.get("on_error", "raise") == "skip" else None
    plan: IngestPlan | None = None
    patients: list[PatientFiles] = []
    if OmegaConf.select(cfg, "ingest.enabled", default=False):  # hospital scans: found and named now, ingested inside the output folder
        plan = plan_ingest(cfg, model, patterns)
        unmasked = plan.patient_ids
    elif cfg.manifest:
        patients = from_manifest(Path(str(cfg.manifest)).expanduser(), contract["modalities"], skipped)
    else:
        patients = from_input(
            Path(str(cfg.input)).expanduser(), contract["naming"], patterns, contract["modalities"], skipped
        )
    for err in skipped or []:
        log.warning("Skipped %s", err)
    if plan is None:
        unmasked = [f.patient_id for f in patients if f.mask is None]
    # from the files listed, before any patient is decoded
    if predictor is None:  # a segmenter gives each patient without a mask file the mask it predicts
        refuse_missing_masks(unmasked, contract, cfg.get("mask_free"))
    out = (
        Path(str(cfg.output_dir))
        if cfg.output_dir
        else Path("outputs/predict") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    )
    # Written into a hidden sibling (tried before any patient is graded), renamed to out when whole.
    with staged_folder(out, "output_dir", PREDICT_FILES) as staging:
        if plan is not None:
            patients = plan.run(staging, skipped)
        templates = TemplateCheck(cfg, contract, plan)
        report = _predict_into(staging, model, applied, patients, skipped, cfg, predictor, templates)
    print(format_predictions(report))
    print(f"Outputs: {out}")
    return report


def _predict_into(
    out: Path,
    model,
    applied: Applied,
    patients: list[PatientFiles],
    skipped: list[DataError] | None,
    cfg: DictConfig,
    predictor: TumourPredictor | None = None,
    templates: TemplateCheck | None = None,
) -> dict[str, Any]:
    """Grade ``patients`` and write every output into ``out``; with ``skipped`` (on_error=skip) a
    patient whose files are bad is listed there instead of stopping the run."""
    contract = model.contract
    classes = list(model.classes)
    threshold, tta = applied.threshold, applied.tta
    temperature = 1.0 if applied.temperature is None else float(applied.temperature)
    rows = []
    for files in patients:
        try:
            record = ingestion_record(files)
            record = record if templates is None else templates.checked(record)
            figures = {} if record is None else registration_figure_copy(files, record, out, safe_name(files.patient_id))
            if record is not None and not record["qc"]["passed"] and cfg.get("qc", "exclude") != "warn":
                rows.append(qc_failed_row(files, record, classes, figures))
                continue
            row = _grade(model, files, contract, cfg, classes, threshold, out, tta, temperature, predictor)
            row["qc"] = qc_text(record)
            row["figures"] = {**row["figures"], **figures}
            rows.append(row)
        except DataError as err:
            if predictor is not None:
                predictor.take(files.patient_id)  # segmented, then refused: its mask is not kept
            if skipped is None:
                raise
            skipped.append(err)
            log.warning("Skipped %s", err)
    if not rows:
        raise DataError(f"no patient could be graded: all {len(skipped or [])} were skipped (see above)")
    _note_training_patients(rows, training_table(model), contract["modalities"])
    report = {
        "model": str(model.path),
        "model_kind": model.kind,
        "threshold": threshold,
        "tta": tta,
        "calibration": (
            {"method": "temperature", "temperature": temperature, "source": applied.source}
            if applied.temperature is not None
            else {"method": "none", "note": f"no temperature in the recipe ({applied.source})"}
        ),
        "recipe": applied.report(),
        "classes": classes,
        "input_contract": contract,
        "mask_free": cfg.get("mask_free"),
        "patients": rows,
    }
    if predictor is not None:
        report["segmenter"] = predictor.report()
    graded = {r["patient_id"]: r["slice_rule"] for r in rows if r["slice_rule"] not in NOT_GRADED}
    note = mask_free_note(graded, contract)
    if note:
        report["mask_free_note"] = note
    if skipped is not None:
        table = skipped_table(skipped)
        report["skipped"] = table.to_dict("records")
        write_frame(out / "skipped.csv", table)
    table = pd.DataFrame(
        [
            [r["patient_id"], *(r["probabilities"][c] for c in classes)]
            + [r["prediction"], r["n_slices"], r["slice_rule"], r["tumour_ml"], r.get("qc")]
            for r in rows
        ],
        columns=[
            "patient_id", *(f"prob_{c}" for c in classes), "prediction", "n_slices", "slice_rule", "tumour_ml", "qc"
        ],
    )
    write_frame(out / "predictions.csv", table)
    write_text(out / "predictions.json", json.dumps(report, indent=2) + "\n")
    write_page(out / "report.html", prediction_page(report, out))
    return report


def _check_options(cfg: DictConfig) -> dict[str, str | None]:
    """Reject bad options before any model or data work; return the ``files.*`` patterns."""
    if not cfg.ckpt:
        raise ConfigError("ckpt= is required: a checkpoint file, a run directory or an export folder")
    if bool(cfg.input) == bool(cfg.manifest):
        raise ConfigError(
            "give exactly one of input=DIR (a patient folder or a folder of them) and manifest=FILE.csv"
        )
    patterns = OmegaConf.to_container(cfg.files, resolve=True) if cfg.get("files") else {}
    unknown = sorted(set(patterns) - {*MODALITIES, "mask"})
    if unknown:
        raise ConfigError(f"files.{unknown[0]}: unknown; files.* takes {[*MODALITIES, 'mask']}")
    if cfg.manifest and any(patterns.values()):
        raise ConfigError("files.* patterns apply to input=DIR; a manifest names its files itself")
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be at least 1")
    check_predict_options(cfg)
    check_qc_mode(cfg)
    check_mask_free(cfg.get("mask_free"))
    try:
        floor = float(cfg.get("min_tumour_ml", 0))
    except (TypeError, ValueError):
        floor = -1.0
    if not floor >= 0:
        raise ConfigError(f"min_tumour_ml={cfg.get('min_tumour_ml')} must be a volume in mL, 0 or more")
    if cfg.get("save_masks") and not cfg.get("segmenter") and not _bundles_segmenter(str(cfg.ckpt)):
        raise ConfigError(
            "save_masks=true writes the masks a segmenter predicts: give segmenter=RUN (a run of task=segment)"
        )
    if cfg.get("on_error", "raise") not in ON_ERROR:
        raise ConfigError(f"on_error={cfg.on_error!r} must be one of {list(ON_ERROR)}")
    return patterns


def _tumour_predictor(cfg: DictConfig, model) -> TumourPredictor | None:
    """The segmenter of ``segmenter=`` (or the one an export bundles), checked against the model's
    contract before any patient is decoded; None without one."""
    from gliograde.segmentation.inference import check_compatible, open_segmenter

    source = cfg.get("segmenter")
    if source:
        segmenter = open_segmenter(str(source))
    else:
        segmenter = _bundled(model)
        source = None if segmenter is None else f"{Path(model.path).parent} (bundled)"
    if segmenter is None:
        return None
    check_compatible(segmenter.contract, model.contract, f"segmenter={source}")
    print(f"Segmenter: {source} (patients without a mask get the tumour mask it predicts)")
    return TumourPredictor(segmenter, model.contract, str(source), float(cfg.min_tumour_ml))


def _bundled(model):
    """The segmenter an export folder bundles with its classifier, if any."""
    if getattr(model, "kind", None) != "onnx":
        return None
    from gliograde.segmentation.onnx_segmenter import bundled_segmenter

    return bundled_segmenter(Path(model.path).parent)


def _bundles_segmenter(ckpt: str) -> bool:
    """Whether ``ckpt=`` names an export folder whose card bundles a segmenter (cheap check)."""
    card = Path(ckpt).expanduser() / "model_card.json"
    if not card.is_file():
        return False
    try:
        return bool(json.loads(card.read_text()).get("segmenter"))
    except (OSError, ValueError, AttributeError):
        return False


def _grade(
    model,
    files: PatientFiles,
    contract,
    cfg,
    classes,
    threshold,
    out: Path,
    tta: str,
    temperature: float,
    predictor: TumourPredictor | None = None,
    templates: TemplateCheck | None = None,
) -> dict[str, Any]:
    try:
        slices = load_patient(files, contract, bool(cfg.resample), cfg.get("mask_free"), predictor)
    except NoTumourFound as none:
        return _no_tumour_row(files, none, classes, predictor, out, bool(cfg.get("save_masks")))
    spacing = grid_spacing(contract)
    predicted = predictor.take(files.patient_id) if predictor is not None else None
    log_probs = model.log_probabilities(slices.images, int(cfg.batch_size), tta, temperature)
    probs = np.exp(log_probs)
    # the patient's probability as training and evaluate.py compute it: its slices' mean
    one_patient = np.zeros(len(log_probs), dtype=int)
    mean = np.exp(patient_log_probs(one_patient, log_probs, PREDICT_AGGREGATE)[1][0])
    call = int(mean[1] >= threshold) if len(classes) == 2 else int(np.argmax(mean))
    name = safe_name(files.patient_id)
    figures = {f"{name}_slices": slice_curve(slices, probs, classes, threshold)}
    if model.grad_cam is not None and cfg.gradcam:
        figures[f"{name}_gradcam"] = gradcam_figure(model, slices, probs, call, classes, contract, mean)
    if predicted is not None:
        figures[f"{name}_outline"] = outline_figure(slices, probs, call, classes, contract, predicted.mask)
    images = {}
    for stem, figure in figures.items():
        images[stem.rsplit("_", 1)[1]] = save_png(figure, out / f"{stem}.png")
    mask_file = None
    if predicted is not None and cfg.get("save_masks"):
        mask_file = predictor.save_mask(predicted, files, out)
    return {
        "patient_id": files.patient_id,
        "probabilities": {c: float(p) for c, p in zip(classes, mean)},
        "prediction": classes[call],
        "n_slices": len(slices.slice_index),
        "slice_rule": slices.slice_rule,
        "tumour_ml": None if slices.tumour_voxels is None else mask_ml(slices.tumour_voxels, spacing),
        "predicted_mask": mask_file,
        "resampled": slices.resampled,
        "slice_index": [int(i) for i in slices.slice_index],
        "slice_probabilities": [[float(p) for p in row] for row in probs],
        "files": {**{m: str(p) for m, p in files.modalities.items()}, "mask": str(files.mask or "")},
        "fingerprints": slices.fingerprints,
        "order_fingerprints": slices.order_fingerprints,
        "figures": images,
    }


def training_table(model) -> pd.DataFrame | None:
    """The training patients (with fingerprints) of a model, when they are known: recorded in
    its checkpoint, else in the run it comes from (``RUN/checkpoints/X.ckpt`` or ``RUN/export``)."""
    recorded = getattr(model, "training_patients", None)
    if recorded is not None:
        return recorded
    path = Path(model.path)
    for run in (path, path.parent, path.parent.parent):
        if (run / "splits.csv").is_file() and (run / "config.yaml").is_file():
            saved = read_splits_table(run / "splits.csv")
            return saved[saved["split"] == "train"]
    return None


def _note_training_patients(
    rows: list[dict[str, Any]], trained: pd.DataFrame | None, modalities: list[str]
) -> None:
    """Warn about, and record, predicted patients whose images the model was trained on
    (compared on the modalities both sides have fingerprints of)."""
    if trained is None or not fingerprint_columns(trained):
        return
    ids = [row["patient_id"] for row in rows]
    table = fingerprint_table(
        ids,
        {m: [row["fingerprints"].get(m, "") for row in rows] for m in modalities},
        {m: [row.get("order_fingerprints", {}).get(m, "") for row in rows] for m in modalities},
    )
    matches = {match.patient_id: match for match in content_matches(table, trained)}
    for row in rows:
        match = matches.get(row["patient_id"])
        row["training_patient"] = match.other_id if match else None
        if match:
            log.warning(
                "Patient %s is the model's training patient %s (same %s images): its prediction is "
                "not an honest estimate",
                match.patient_id,
                match.other_id,
                "/".join(match.modalities),
            )


def _no_tumour_row(
    files: PatientFiles,
    none: NoTumourFound,
    classes: list[str],
    predictor: TumourPredictor,
    out: Path,
    save_masks: bool,
) -> dict[str, Any]:
    """The row of a patient in whom the segmenter found no tumour: reported, not graded."""
    predicted = predictor.take(files.patient_id)
    mask_file = predictor.save_mask(predicted, files, out) if save_masks and predicted is not None else None
    log.warning("Patient %s: %s", files.patient_id, none.predicted.not_found())
    return {
        "patient_id": files.patient_id,
        "probabilities": dict.fromkeys(classes),
        "prediction": NO_TUMOUR_RULE,
        "n_slices": 0,
        "slice_rule": NO_TUMOUR_RULE,
        "tumour_ml": none.predicted.ml,
        "predicted_mask": mask_file,
        "note": none.predicted.not_found(),
        "resampled": None,
        "slice_index": [],
        "slice_probabilities": [],
        "files": {**{m: str(p) for m, p in files.modalities.items()}, "mask": ""},
        "fingerprints": none.areas.fingerprints,
        "order_fingerprints": none.areas.order_fingerprints,
        "figures": {},
    }


def format_predictions(report: dict[str, Any]) -> str:
    """The headline (threshold and its source, the calls), one line per patient (the call, its
    probabilities and the slice rule used), then the notes: the lines report.html shows too."""
    classes = report["classes"]
    lines = prediction_headline(report)
    for row in report["patients"]:
        if row["slice_rule"] in NOT_GRADED:
            continue  # said in the notes
        probs = ", ".join(f"p({c})={row['probabilities'][c]:.3f}" for c in classes)
        lines.append(
            f"  {row['patient_id']}: {row['prediction']}  {probs}  [{row['n_slices']} slices, {row['slice_rule']}]"
        )
    return "\n".join(lines + prediction_notes(report))

"""``evaluate.py``: a finished run's checkpoint on a split (or another cohort), reported per
patient with intervals, plots and Grad-CAM, written to one output directory.

Each step lives in its own module: ``inputs`` (run config, contract, data, model), ``checks``
(options, split, leakage), ``predict``, ``scores``, ``figure_set``, ``tables`` and ``report``.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from gliograde.files.atomic import write_files
from gliograde.data.errors import DataError
from gliograde.evaluation import checks, inputs
from gliograde.evaluation.calibration import (
    calibrate,
    calibration_scores,
    check_storable,
    fitted_on_note,
    store_calibration,
    with_temperature,
)
from gliograde.evaluation.errors import EvaluationError
from gliograde.evaluation.figure_set import gradcam_figures, metric_figures
from gliograde.evaluation.predict import predict
from gliograde.data.batches.splits import read_splits
from gliograde.evaluation.predicted_masks import segmenter_report, tumour_volumes
from gliograde.segmentation.predicted import MIN_TUMOUR_ML
from gliograde.evaluation.report import (
    REPORT_FILES,
    close_figures,
    format_report,
    log_figures,
    report_dir,
    save_figures,
    tensorboard_dir,
    write_html,
    write_metrics,
)
from gliograde.evaluation.intervals import few_per_class
from gliograde.evaluation.scores import choose_threshold, score, validation_predictions
from gliograde.evaluation.summary import calls_of
from gliograde.evaluation.tables import patient_rows, write_predictions
from gliograde.inference.calibration import CALIBRATION_FILE
from gliograde.inference.models import find_checkpoint
from gliograde.inference.recipe import PREDICT_AGGREGATE, RECIPE_FILE, chooses_recipe
from gliograde.inference.recipe_record import record_recipe, threshold_source
from gliograde.inference.tta import check_tta, check_tta_for
from gliograde.contract.mask_free import mask_free_note
from gliograde.files.output_folder import check_folder_target, staged_folder, writable

__all__ = ["EvaluationError", "data_overrides", "evaluate", "format_report"]


def evaluate(cfg: DictConfig, data_overrides: list[str]) -> dict[str, Any]:
    """Evaluate ``cfg.run_dir`` as configured; return the metrics written to metrics.json."""
    checks.check_options(cfg)
    run = Path(cfg.run_dir)
    run_cfg = inputs.load_run_config(run)
    checkpoint = find_checkpoint(run, str(cfg.ckpt))
    contract = inputs.load_contract(checkpoint, run_cfg)
    check_tta_for(str(cfg.tta), contract)  # before any data or model work
    data_cfg, other_cohort = inputs.data_config(cfg, run_cfg, data_overrides, contract)
    segmenter = _open_segmenter(cfg, contract)  # before any data work
    inputs.refuse_missing_masks(cfg, data_cfg, contract)  # from the file names, before the cache
    # Where it writes, tried before the data and the inference: a read-only run is never written to.
    out = report_dir(cfg, run, data_overrides)
    check_folder_target(out, "output_dir", REPORT_FILES)
    options = _recipe_options(cfg)
    if not chooses_recipe(options) and chooses_recipe({**options, "aggregate": PREDICT_AGGREGATE}):
        print(
            f"Note: with aggregate={cfg.aggregate} this evaluation's tta, threshold and temperature are "
            f"neither stored nor recorded as the run's recipe (predict.py averages a patient's slices: "
            f"aggregate={PREDICT_AGGREGATE}); its own metrics use them"
        )
    elif str(cfg.calibration) == "temperature":
        check_storable(run)
    what_if = _what_if(cfg)
    if what_if and chooses_recipe(options):
        print(
            f"Note: this evaluation grades with {what_if}, so its tta, threshold and temperature are not "
            f"recorded as the run's recipe; predict.py and export keep following {run / RECIPE_FILE} as it is"
        )
    keeps_recipe = chooses_recipe(options) and (bool(what_if) or not writable(run))
    if keeps_recipe and not what_if:
        print(
            f"Note: {run} cannot be written, so this evaluation's tta and threshold are not recorded as its "
            f"recipe; predict.py and export keep following {run / RECIPE_FILE} as it is"
        )
    tensorboard = tensorboard_dir(run)
    hide_masks = str(cfg.get("masks", "use")) == "hidden"
    datamodule = inputs.build_datamodule(
        data_cfg, contract, cfg.get("mask_free"), hide_masks, segmenter, bool(cfg.progress),
        float(cfg.get("min_tumour_ml", MIN_TUMOUR_ML)),
        *(_evaluated(cfg, run, other_cohort) if segmenter is not None else (None, None)),
    )
    # from the split made, not from the datasets left: a segmenter's evaluation grades one split only
    labelled = any(split != "all" for split in datamodule.assignment.values())
    if cfg.split != "all" and not labelled:
        raise EvaluationError(f"the cohort has no labels, so it has no {cfg.split} split: use split=all")
    if cfg.split not in datamodule.datasets:
        raise EvaluationError(f"no patients in the {cfg.split} split")
    if not other_cohort and cfg.split != "all":
        checks.check_same_split(datamodule, run / "splits.csv")
    trained, source = checks.training_patients(checkpoint, run)
    identity_notes = checks.refuse_leak(datamodule, cfg.split, trained, bool(cfg.allow_leak), source)
    if segmenter is not None and getattr(segmenter, "kind", "") == "checkpoint":
        # a segmenter that saw the evaluated patients draws their masks better than it would a new one's
        seg_checkpoint = Path(segmenter.path)
        seg_trained, seg_source = checks.training_patients(seg_checkpoint, seg_checkpoint.parent.parent)
        identity_notes += checks.refuse_leak(
            datamodule, cfg.split, seg_trained, bool(cfg.allow_leak), f"segmenter: {seg_source}"
        )
    if not contract.get("image_size"):  # a contract rebuilt from an old config: check the slices
        check_tta(str(cfg.tta), *datamodule.datasets[cfg.split][0]["image"].shape[-2:])

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = inputs.load_model(checkpoint, contract, device)
    figures: dict[str, Any] = {}
    try:
        with staged_folder(out, "output_dir", REPORT_FILES) as staging:
            report, recipe = _report(
                staging, figures, cfg, run, run_cfg, checkpoint, contract, datamodule, other_cohort, model,
                device, identity_notes,
            )
            # Stored with the report, once it is whole: a failure leaves neither (nor the folder).
            if recipe is not None and not keeps_recipe:
                _store_recipe(run, checkpoint, out, recipe)
        log_figures(figures, tensorboard, f"eval/{cfg.split}")  # the run's copy, once the report is whole
    finally:
        close_figures(figures)
    print(format_report(report))
    print(f"Outputs: {out}")
    return report


def _open_segmenter(cfg: DictConfig, contract: dict[str, Any]):
    """``segmenter=``'s segmenter, checked against the classifier's contract; None without one."""
    if not cfg.get("segmenter"):
        return None
    from gliograde.segmentation.inference import check_compatible, open_segmenter

    segmenter = open_segmenter(str(cfg.segmenter))
    check_compatible(segmenter.contract, contract, f"segmenter={cfg.segmenter}")
    return segmenter


def _evaluated(cfg: DictConfig, run: Path, other_cohort: bool) -> tuple[set[str] | None, set[str] | None]:
    """The patients of the run's own cohort this evaluation grades, and their splits (its split,
    and the val split a Youden threshold or a temperature is fitted on); (None, None): every
    patient (another cohort, split=all)."""
    if other_cohort or cfg.split == "all" or not (run / "splits.csv").is_file():
        return None, None
    wanted = {str(cfg.split)}
    if str(cfg.threshold) == "youden" or str(cfg.calibration) == "temperature":
        wanted.add("val")
    return {patient for patient, split in read_splits(run / "splits.csv").items() if split in wanted}, wanted


def _what_if(cfg: DictConfig) -> str | None:
    """What makes this evaluation a measurement of another way of grading than the run's own
    (hidden masks, a mask-free rule, a segmenter's masks); None when it grades as the run does."""
    parts = []
    if str(cfg.get("masks", "use")) != "use":
        parts.append(f"masks={cfg.masks}")
    if cfg.get("mask_free"):
        parts.append(f"mask_free={cfg.mask_free}")
    if cfg.get("segmenter"):
        parts.append(f"segmenter={cfg.segmenter}")
    return " ".join(parts) or None


def _store_recipe(run: Path, checkpoint: Path, out: Path, recipe: dict[str, Any]) -> None:
    """Store the evaluation's temperature (if any) and record its recipe, the two together: when
    the recipe cannot be written, the run's earlier ``calibration.json`` is put back."""
    stored = run / CALIBRATION_FILE
    previous = stored.read_bytes() if stored.is_file() else None
    try:
        if recipe["calibration"] is not None:
            recipe["calibration"] = store_calibration(run, recipe["calibration"])
        record_recipe(run, checkpoint, evaluation=out, **recipe)
    except BaseException:
        if recipe["calibration"] is not None:
            with contextlib.suppress(OSError):
                if previous is None:
                    stored.unlink(missing_ok=True)
                else:
                    write_files({stored: previous})
        raise


def _report(
    out: Path,
    figures: dict[str, Any],
    cfg: DictConfig,
    run: Path,
    run_cfg: DictConfig,
    checkpoint: Path,
    contract: dict[str, Any],
    datamodule,
    other_cohort: bool,
    model,
    device: torch.device,
    identity_notes: list[str],
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Predict, score and write the whole report into ``out`` (the staged output folder); the
    figures drawn are left in ``figures``. Return the report and, when this evaluation chooses
    how the model is applied, the arguments of its recipe (recorded once ``out`` is in place)."""
    show = bool(cfg.progress)
    classes = list(model.hparams.class_names)
    tta, calibration = str(cfg.tta), str(cfg.calibration)
    predictions = predict(model, datamodule, cfg.split, cfg.aggregate, device, show, tta)
    # A Youden threshold and a temperature come from the run's own validation patients, never
    # the evaluated ones.
    own_val = not other_cohort and cfg.split != "all"
    val = None
    if str(cfg.threshold) == "youden" or calibration == "temperature":
        val_source = datamodule if own_val else inputs.run_datamodule(run_cfg)
        val = validation_predictions(model, val_source, cfg.aggregate, device, show, tta)
    uncalibrated = record = None
    calibration_report: dict[str, Any] = {"method": "none"}
    if calibration == "temperature":
        record = calibrate(checkpoint, val, tta)
        uncalibrated = predictions
        predictions = with_temperature(predictions, record["temperature"])
        val = with_temperature(val, record["temperature"])
        calibration_report = {
            "method": "temperature",
            "temperature": record["temperature"],
            "file": str(run / "calibration.json") if str(cfg.aggregate) == PREDICT_AGGREGATE else None,
            "val_patients": len(record["val_patients"]),
            "val_nll_before": record["nll_before"],
            "val_nll_after": record["nll_after"],
            "unreliable": bool(record.get("unreliable")),  # fitted on fewer than 10 patients of a class
        }
        note = None if other_cohort else fitted_on_note(record, list(predictions.patients))
        if note:
            calibration_report["note"] = note
        if predictions.has_labels:
            calibration_report["patient"] = calibration_scores(uncalibrated, predictions)
    threshold, interval = choose_threshold(cfg.threshold, val)
    command = shlex.join(["python", "evaluate.py", *sys.argv[1:]])
    rules = {p: datamodule.slice_rules[p] for p in predictions.patients}
    supplied = getattr(datamodule, "supplied", None)
    volumes = tumour_volumes(datamodule.prepared, contract, supplied)
    patients = write_predictions(
        out, predictions, datamodule.slice_spec.plane, classes, threshold, rules,
        {p: volumes.get(p) for p in predictions.patients},
    )
    report: dict[str, Any] = {
        "run_dir": str(run),
        "command": command,
        "checkpoint": str(checkpoint),
        "split": cfg.split,
        "cohort": str(datamodule.cohort.root),
        "aggregate": cfg.aggregate,
        "threshold": threshold,
        "threshold_interval": interval,
        "threshold_unreliable": interval is not None and few_per_class(val.patient_labels),
        "threshold_source": threshold_source(threshold, interval, val),
        "calls": calls_of(patients["prediction"].tolist(), classes),
        "tta": tta,
        "calibration": calibration_report,
        "classes": classes,
        "input_contract": contract,
        "n_patients": len(predictions.patients),
        "n_slices": len(predictions.probs),
        "masks": str(cfg.get("masks", "use")),
        "mask_free": cfg.get("mask_free"),
        "slice_rules": rules,
    }
    if supplied is not None:
        report["segmenter"] = segmenter_report(cfg.segmenter, supplied, float(cfg.min_tumour_ml))
    note = mask_free_note(rules, inputs.with_slices(contract, datamodule.slice_spec.strategy))
    if note:
        report["mask_free_note"] = note
    if datamodule.crop_rules:  # how each patient's crops were placed (no mask: the brain's centre)
        report["crop_rules"] = {p: datamodule.crop_rules[p] for p in predictions.patients}
    if identity_notes:
        report["identity_notes"] = identity_notes
    report["patients"] = patient_rows(patients)
    if predictions.has_labels:
        level, resamples, seed = float(cfg.ci_level), int(cfg.bootstrap), int(cfg.seed)
        report.update(score(predictions, threshold, classes, level, resamples, seed, show))
    else:
        report["note"] = "the cohort has no labels: predictions only"
    write_metrics(out, report)
    options = _recipe_options(cfg)
    recipe = None
    if chooses_recipe(options):  # how the model is meant to be applied: predict and export follow it
        recipe = {
            "options": options, "calibration": record, "threshold": threshold,
            "threshold_source": report["threshold_source"], "command": command,
        }

    figures.update(metric_figures(predictions, classes, threshold, cfg.split, uncalibrated))
    dataset = datamodule.datasets[cfg.split]
    figures.update(
        gradcam_figures(
            model, dataset, datamodule.modalities, predictions, threshold, int(cfg.gradcam_n), device, show
        )
    )
    images = save_figures(figures, out)
    write_html(out, report, images)
    return report, recipe


def _recipe_options(cfg: DictConfig) -> dict[str, Any]:
    """The evaluate options a recipe is made of."""
    return {
        "ckpt": str(cfg.ckpt), "tta": str(cfg.tta), "aggregate": str(cfg.aggregate),
        "calibration": str(cfg.calibration), "threshold": cfg.threshold,
    }


def data_overrides(task_overrides: list[str]) -> list[str]:
    """The ``data.*`` overrides of the command line (applied on the run's data config)."""
    kept = []
    for item in task_overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key.startswith("data."):
            kept.append(item.lstrip("+~"))
        elif key == "data":
            raise DataError("evaluate.py takes data.* keys (e.g. data.root=PATH), not a data= preset")
    return kept

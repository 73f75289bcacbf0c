"""``evaluate.py``: a finished run's checkpoint on a split (or another cohort), reported per
patient with intervals, plots and Grad-CAM, written to one output directory.

Each step lives in its own module: ``inputs`` (run config, contract, data, model), ``checks``
(options, split, leakage), ``predict``, ``scores``, ``figure_set``, ``tables`` and ``report``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from gliograde.data.errors import DataError
from gliograde.evaluation import checks, inputs
from gliograde.evaluation.calibration import calibrate, calibration_scores, fitted_on_note, with_temperature
from gliograde.evaluation.errors import EvaluationError
from gliograde.evaluation.figure_set import gradcam_figures, metric_figures
from gliograde.evaluation.predict import predict
from gliograde.evaluation.report import format_report, report_dir, save_figures, write_html, write_metrics
from gliograde.evaluation.intervals import few_per_class
from gliograde.evaluation.scores import choose_threshold, score, validation_predictions
from gliograde.evaluation.tables import write_predictions
from gliograde.inference.models import find_checkpoint
from gliograde.inference.tta import check_tta, check_tta_for

__all__ = ["EvaluationError", "data_overrides", "evaluate", "format_report"]


def evaluate(cfg: DictConfig, data_overrides: list[str]) -> dict[str, Any]:
    """Evaluate ``cfg.run_dir`` as configured; return the metrics written to metrics.json."""
    checks.check_options(cfg)
    run = Path(cfg.run_dir)
    run_cfg = inputs.load_run_config(run)
    show = bool(cfg.progress)
    checkpoint = find_checkpoint(run, str(cfg.ckpt))
    contract = inputs.load_contract(checkpoint, run_cfg)
    check_tta_for(str(cfg.tta), contract)  # before any data or model work
    data_cfg, other_cohort = inputs.data_config(cfg, run_cfg, data_overrides, contract)
    datamodule = inputs.build_datamodule(data_cfg, contract)
    labelled = "test" in datamodule.datasets or "train" in datamodule.datasets
    if cfg.split != "all" and not labelled:
        raise EvaluationError(f"the cohort has no labels, so it has no {cfg.split} split: use split=all")
    if cfg.split not in datamodule.datasets:
        raise EvaluationError(f"no patients in the {cfg.split} split")
    if not other_cohort and cfg.split != "all":
        checks.check_same_split(datamodule, run / "splits.csv")
    checks.refuse_leak(datamodule, cfg.split, run / "splits.csv", bool(cfg.allow_leak))
    if not contract.get("image_size"):  # a contract rebuilt from an old config: check the slices
        check_tta(str(cfg.tta), *datamodule.datasets[cfg.split][0]["image"].shape[-2:])

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = inputs.load_model(checkpoint, contract, device)
    classes = list(model.hparams.class_names)
    out = report_dir(cfg, run, data_overrides)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("gradcam_*.png"):  # from an earlier evaluation with another gradcam_n
        stale.unlink()

    tta, calibration = str(cfg.tta), str(cfg.calibration)
    predictions = predict(model, datamodule, cfg.split, cfg.aggregate, device, show, tta)
    # A Youden threshold and a temperature come from the run's own validation patients, never
    # the evaluated ones.
    own_val = not other_cohort and cfg.split != "all"
    val = None
    if str(cfg.threshold) == "youden" or calibration == "temperature":
        val_source = datamodule if own_val else inputs.run_datamodule(run_cfg)
        val = validation_predictions(model, val_source, cfg.aggregate, device, show, tta)
    uncalibrated = None
    calibration_report: dict[str, Any] = {"method": "none"}
    if calibration == "temperature":
        record = calibrate(run, checkpoint, val, tta)
        uncalibrated = predictions
        predictions = with_temperature(predictions, record["temperature"])
        val = with_temperature(val, record["temperature"])
        calibration_report = {
            "method": "temperature",
            "temperature": record["temperature"],
            "file": str(run / "calibration.json"),
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
    write_predictions(out, predictions, datamodule.slice_spec.plane, classes, threshold)
    report: dict[str, Any] = {
        "run_dir": str(run),
        "command": shlex.join(["python", "evaluate.py", *sys.argv[1:]]),
        "checkpoint": str(checkpoint),
        "split": cfg.split,
        "cohort": str(datamodule.cohort.root),
        "aggregate": cfg.aggregate,
        "threshold": threshold,
        "threshold_interval": interval,
        "threshold_unreliable": interval is not None and few_per_class(val.patient_labels),
        "tta": tta,
        "calibration": calibration_report,
        "classes": classes,
        "input_contract": contract,
        "n_patients": len(predictions.patients),
        "n_slices": len(predictions.probs),
    }
    if datamodule.crop_rules:  # how each patient's crops were placed (no mask: the brain's centre)
        report["crop_rules"] = {p: datamodule.crop_rules[p] for p in predictions.patients}
    if predictions.has_labels:
        level, resamples, seed = float(cfg.ci_level), int(cfg.bootstrap), int(cfg.seed)
        report.update(score(predictions, threshold, classes, level, resamples, seed, show))
    else:
        report["note"] = "the cohort has no labels: predictions only"
    write_metrics(out, report)

    figures = metric_figures(predictions, classes, threshold, cfg.split, uncalibrated)
    dataset = datamodule.datasets[cfg.split]
    figures.update(
        gradcam_figures(
            model, dataset, datamodule.modalities, predictions, threshold, int(cfg.gradcam_n), device, show
        )
    )
    images = save_figures(figures, out, run / "tensorboard", f"eval/{cfg.split}")
    write_html(out, report, images)
    print(format_report(report))
    print(f"Outputs: {out}")
    return report


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

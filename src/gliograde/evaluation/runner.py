"""``evaluate.py``: a finished run's checkpoint on a split (or another cohort), reported per
patient with bootstrap intervals, plots and Grad-CAM, written to one output directory."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from gliograde.atomic import write_csv, write_text
from gliograde.config import build
from gliograde.contract import check_grid, check_model, enforce, read_checkpoint_contract
from gliograde.data.cohort import discover_cohort
from gliograde.data.datamodule import GliomaDataModule
from gliograde.data.errors import DataError
from gliograde.data.slices import NEEDS_MASK
from gliograde.data.specs import LabelSpec, LayoutSpec, from_mapping
from gliograde.data.identity import content_matches, fingerprint_columns, id_collisions
from gliograde.data.splits import read_splits, read_splits_table
from gliograde.errors import GliogradeError
from gliograde.evaluation import plots
from gliograde.evaluation.aggregate import AGGREGATES, aggregate
from gliograde.evaluation.gradcam import grad_cam
from gliograde.inference.models import find_checkpoint
from gliograde.evaluation.report_html import evaluation_page, write_page
from gliograde.evaluation.intervals import UNRELIABLE_NOTE, patient_intervals
from gliograde.evaluation.metrics import METRICS, binary_metrics, bootstrap_intervals, youden_threshold
from gliograde.models.backbones import cam_layer
from gliograde.models.module import GradeClassifier
from gliograde.schema import validate_data_config

SPLITS = ("test", "val", "train", "all")

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Slice-level outputs of one split, and their patient-level aggregate."""

    patient_ids: list[str]  # per slice
    slice_index: np.ndarray
    labels: np.ndarray  # per slice, -1 when unknown
    probs: np.ndarray  # [N, K]
    patients: list[str]  # per patient (ascending)
    patient_probs: np.ndarray  # [P, K]
    patient_labels: np.ndarray
    slices_per_patient: np.ndarray
    slice_patient: np.ndarray  # per slice: its row in the patient arrays


class EvaluationError(GliogradeError, ValueError):
    """The evaluation cannot be done as asked (leakage, missing run files, no labels...)."""


def evaluate(cfg: DictConfig, data_overrides: list[str]) -> dict[str, Any]:
    """Evaluate ``cfg.run_dir`` as configured; return the metrics written to metrics.json."""
    run = Path(cfg.run_dir)
    if not (run / "config.yaml").is_file():
        raise EvaluationError(
            f"{run}: not a run directory (no config.yaml); pass run_dir=logs/train/runs/..."
        )
    _check_options(cfg)
    run_cfg = OmegaConf.load(run / "config.yaml")
    checkpoint = find_checkpoint(run, str(cfg.ckpt))
    contract = load_contract(checkpoint, run_cfg)
    data_cfg = OmegaConf.merge(run_cfg.data, OmegaConf.from_dotlist(data_overrides).get("data", {}))
    validate_data_config(data_cfg)
    for note in enforce(contract, data_cfg, {item.split("=", 1)[0] for item in data_overrides}):
        print(note)
    other_cohort = Path(str(data_cfg.root)).resolve() != Path(str(run_cfg.data.root)).resolve()
    data_cfg.require_labels = False
    data_cfg.synthetic = None  # evaluate what is there; never generate
    _use_mask_free_strategy(data_cfg, cfg.mask_free_strategy)
    if cfg.batch_size:
        data_cfg.batch_size = cfg.batch_size
    if cfg.split == "all":
        data_cfg.split = None  # the whole cohort, however small: nothing to split
        data_cfg.folds = data_cfg.fold = None

    datamodule: GliomaDataModule = build(data_cfg)
    datamodule.prepare_data()
    check_grid(contract, datamodule.cached.shape, str(datamodule.cohort.root))
    datamodule.setup()
    labelled = "test" in datamodule.datasets or "train" in datamodule.datasets
    if cfg.split != "all" and not labelled:
        raise EvaluationError(f"the cohort has no labels, so it has no {cfg.split} split: use split=all")
    if cfg.split not in datamodule.datasets:
        raise EvaluationError(f"no patients in the {cfg.split} split")
    if not other_cohort and cfg.split != "all":
        _check_same_split(datamodule, run / "splits.csv")
    _refuse_leak(datamodule, cfg.split, run / "splits.csv", bool(cfg.allow_leak))

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = GradeClassifier.load_from_checkpoint(checkpoint, map_location=device, weights_only=False)
    model.eval()
    classes = list(model.hparams.class_names)
    check_model(contract, int(model.hparams.in_channels), classes)
    if len(classes) != 2:
        raise EvaluationError(f"the report covers two classes; this model has {len(classes)}: {classes}")

    out = Path(cfg.output_dir) if cfg.output_dir else run / "eval" / cfg.split
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("gradcam_*.png"):  # from an earlier evaluation with another gradcam_n
        stale.unlink()
    predictions = predict(model, datamodule, cfg.split, cfg.aggregate, device)
    # A Youden threshold comes from the run's own validation patients, never the evaluated ones.
    own_val = not other_cohort and cfg.split != "all"
    val_source = _run_datamodule(run_cfg) if not own_val and str(cfg.threshold) == "youden" else datamodule
    threshold = _threshold(cfg, model, val_source, device)
    _write_predictions(out, predictions, datamodule.slice_spec.plane, classes, threshold)
    report: dict[str, Any] = {
        "run_dir": str(run),
        "command": shlex.join(["python", "evaluate.py", *sys.argv[1:]]),
        "checkpoint": str(checkpoint),
        "split": cfg.split,
        "cohort": str(datamodule.cohort.root),
        "aggregate": cfg.aggregate,
        "threshold": threshold,
        "classes": classes,
        "input_contract": contract,
        "n_patients": len(predictions.patients),
        "n_slices": len(predictions.probs),
    }
    has_labels = bool((predictions.patient_labels >= 0).all())
    if has_labels:
        report.update(_metrics(predictions, threshold, cfg, classes))
    else:
        report["note"] = "the cohort has no labels: predictions only"
    write_text(out / "metrics.json", json.dumps(report, indent=2) + "\n")
    figures = _figures(predictions, classes, threshold, has_labels)
    figures.update(_gradcam_figures(model, datamodule, predictions, threshold, int(cfg.gradcam_n), device))
    _save_figures(figures, out, run, cfg.split)
    write_page(out / "report.html", evaluation_page(report, [out / f"{name}.png" for name in figures]))
    print(format_report(report))
    print(f"Outputs: {out}")
    return report


def load_contract(checkpoint: Path, run_cfg: DictConfig) -> dict[str, Any]:
    """The model's input contract: from its checkpoint, else the run's config.yaml."""
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    if "input_contract" not in stored and "input_contract" in run_cfg:
        return OmegaConf.to_container(run_cfg.input_contract, resolve=True)
    return read_checkpoint_contract(stored, run_cfg.data)


def _check_options(cfg: DictConfig) -> None:
    """Reject bad options before any data or model work."""
    if cfg.split not in SPLITS:
        raise EvaluationError(f"split={cfg.split!r} must be one of {list(SPLITS)}")
    if cfg.aggregate not in AGGREGATES:
        raise EvaluationError(f"aggregate={cfg.aggregate!r} must be one of {list(AGGREGATES)}")
    if str(cfg.threshold) != "youden":
        try:
            value = float(cfg.threshold)
        except ValueError:
            value = float("nan")
        if not 0 < value < 1:
            raise EvaluationError(f"threshold={cfg.threshold} must be a probability in (0, 1), or youden")


def _run_datamodule(run_cfg: DictConfig) -> GliomaDataModule:
    """The run's own cohort and split, as it trained on them (its cache already exists)."""
    data_cfg = run_cfg.data.copy()
    data_cfg.synthetic = None
    datamodule = build(data_cfg)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def _use_mask_free_strategy(data_cfg: DictConfig, fallback: str) -> None:
    """A cohort without masks cannot use a tumour-based slice strategy: switch and say so."""
    if data_cfg.slices.strategy not in NEEDS_MASK:
        return
    layout = from_mapping(LayoutSpec, OmegaConf.to_container(data_cfg.layout), "data.layout")
    labels = from_mapping(LabelSpec, OmegaConf.to_container(data_cfg.labels), "data.labels")
    quiet = logging.getLogger("gliograde.data")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the DataModule reports the cohort's warnings itself, once
    try:
        cohort = discover_cohort(data_cfg.root, layout, labels, require_labels=False)
    finally:
        quiet.setLevel(level)
    if cohort.patients and all(p.mask is None for p in cohort.patients):
        print(
            f"The cohort has no tumour masks, so slices are chosen by data.slices.strategy={fallback} "
            f"instead of the run's {data_cfg.slices.strategy}."
        )
        data_cfg.slices.strategy = fallback


def _check_same_split(datamodule: GliomaDataModule, splits_csv: Path) -> None:
    """On the run's own cohort, the rebuilt split must be the one the run trained with."""
    if not splits_csv.is_file():
        return
    saved = read_splits(splits_csv)
    differs = [p for p, s in datamodule.assignment.items() if p in saved and saved[p] != s]
    if differs:
        raise EvaluationError(
            f"{len(differs)} patient(s) (e.g. {differs[0]}) are in another split than in {splits_csv}: "
            "the data settings differ from the run's; evaluate with the run's own data.* values"
        )


def _refuse_leak(datamodule: GliomaDataModule, split: str, splits_csv: Path, allow: bool) -> None:
    """Patients the model was trained on give no honest estimate: refuse unless allowed.

    A patient is matched by its images (under any id or path) where the run recorded
    fingerprints, else by id. A shared id with other images is another patient: a warning.
    """
    if not splits_csv.is_file():
        return
    saved = read_splits_table(splits_csv)
    trained = saved[saved["split"] == "train"]
    evaluated = {
        datamodule.cached.patient_ids[i] for i in np.unique(datamodule.datasets[split].patient_positions)
    }
    table = datamodule.fingerprint_table()
    table = table[table["patient_id"].isin(evaluated)]
    if fingerprint_columns(trained):
        leaked = [match.describe() for match in content_matches(table, trained)]
        for patient in id_collisions(table, trained):
            log.warning(
                "Patient %s shares its id with a training patient of the run but not its images: "
                "an id collision, not a leak",
                patient,
            )
    else:  # a run recorded before fingerprints: ids are all there is
        leaked = sorted(set(trained["patient_id"]) & evaluated)
    if not leaked:
        return
    message = (
        f"{len(leaked)} of the {len(evaluated)} patients to evaluate (e.g. {leaked[0]}) were in the run's "
        "training split"
    )
    if not allow:
        raise EvaluationError(
            f"{message}: the figures would be inflated. Use split=test or val, or allow_leak=true"
        )
    log.warning("%s (allow_leak=true: the figures are inflated)", message)


@torch.no_grad()
def predict(
    model: GradeClassifier, datamodule: GliomaDataModule, split: str, method: str, device: torch.device
) -> Predictions:
    """Slice probabilities of ``split`` and their patient aggregate."""
    patients, slices, labels, probs = [], [], [], []
    for batch in datamodule.dataloader(split):
        images = batch["image"].to(device, non_blocking=True).float()
        probs.append(model(images).float().softmax(dim=1).cpu().numpy())
        patients.append(batch["patient"].numpy())
        slices.append(batch["slice_index"].numpy())
        labels.append(batch["label"].numpy())
    patient = np.concatenate(patients)
    slice_index = np.concatenate(slices)
    label = np.concatenate(labels)
    prob = np.concatenate(probs)
    cached = datamodule.cached
    plane = datamodule.slice_spec.plane
    area = cached.tumour_area[plane][patient, slice_index].astype(float)
    unique, patient_probs, counts = aggregate(patient, prob, method, area)
    patient_label = np.array([label[patient == p][0] for p in unique])
    row = np.searchsorted(unique, patient)
    return Predictions(
        patient_ids=[cached.patient_ids[p] for p in patient],
        slice_index=slice_index,
        labels=label,
        probs=prob,
        patients=[cached.patient_ids[p] for p in unique],
        patient_probs=patient_probs,
        patient_labels=patient_label,
        slices_per_patient=counts,
        slice_patient=row,
    )


def _threshold(cfg: DictConfig, model, datamodule: GliomaDataModule, device) -> float:
    if str(cfg.threshold) != "youden":
        return float(cfg.threshold)
    if "val" not in datamodule.datasets:
        raise EvaluationError("threshold=youden is chosen on the val split, which this cohort does not have")
    val = predict(model, datamodule, "val", cfg.aggregate, device)
    return youden_threshold(val.patient_labels, val.patient_probs[:, 1])


def _metrics(pred: Predictions, threshold: float, cfg: DictConfig, classes: list[str]) -> dict[str, Any]:
    labels = pred.patient_labels
    positive = pred.patient_probs[:, 1]
    patient = patient_intervals(
        labels,
        positive,
        threshold,
        level=float(cfg.ci_level),
        resamples=int(cfg.bootstrap),
        seed=int(cfg.seed),
    )
    # Slice metrics resample patients too: slices of one patient are not independent.
    members = [np.flatnonzero(pred.slice_patient == i) for i in range(len(labels))]

    def slice_metrics(idx: np.ndarray) -> dict[str, float]:
        rows = np.concatenate([members[i] for i in idx])
        return binary_metrics(pred.labels[rows], pred.probs[rows, 1], threshold)

    slices = bootstrap_intervals(
        slice_metrics,
        len(labels),
        resamples=int(cfg.bootstrap),
        level=float(cfg.ci_level),
        seed=int(cfg.seed),
        strata=labels,
    )
    counts = np.bincount(labels, minlength=2)
    majority = int(np.argmax(counts))
    baseline = binary_metrics(labels, np.full(len(labels), float(majority)), 0.5)
    return {
        "patient": patient,
        "slice": slices,
        "class_counts": {name: int(n) for name, n in zip(classes, counts)},
        "majority_baseline": {
            "class": majority,
            "accuracy": baseline["accuracy"],
            "balanced_accuracy": 0.5,
        },
        "ci_level": float(cfg.ci_level),
        "bootstrap_resamples": int(cfg.bootstrap),
    }


def _write_predictions(
    out: Path, pred: Predictions, plane: str, classes: list[str], threshold: float
) -> None:
    prob_columns = [f"prob_{c}" for c in classes]
    write_csv(
        out / "slice_predictions.csv",
        ["patient_id", "plane", "slice_index", "label", *prob_columns],
        [
            [pid, plane, int(z), _label(classes, y), *(f"{p:.6f}" for p in probs)]
            for pid, z, y, probs in zip(pred.patient_ids, pred.slice_index, pred.labels, pred.probs)
        ],
    )
    predicted = (pred.patient_probs[:, 1] >= threshold).astype(int)
    write_csv(
        out / "patient_predictions.csv",
        ["patient_id", "label", "probability", "prediction", "n_slices"],
        [
            [
                pid,
                _label(classes, y),
                f"{p[1]:.6f}",
                classes[predicted[i]],
                int(n),
            ]
            for i, (pid, y, p, n) in enumerate(
                zip(pred.patients, pred.patient_labels, pred.patient_probs, pred.slices_per_patient)
            )
        ],
    )


def _label(classes: list[str], y: int) -> str:
    return classes[y] if y >= 0 else ""


def _figures(pred: Predictions, classes: list[str], threshold: float, has_labels: bool) -> dict[str, Any]:
    labels = pred.patient_labels
    positive = pred.patient_probs[:, 1]
    if not has_labels:
        return {}
    figures = {
        "confusion_matrix": plots.confusion_figure(labels, (positive >= threshold).astype(int), classes),
        "reliability": plots.reliability_figure(labels, positive),
        "probability_strip": plots.strip_figure(labels, positive, classes, threshold),
    }
    if 0 < labels.sum() < len(labels):
        figures["roc"] = plots.roc_figure(labels, positive, "ROC (patients)")
    return figures


def _gradcam_figures(
    model, datamodule, pred: Predictions, threshold: float, n: int, device
) -> dict[str, Any]:
    """Overlays for the ``n`` most confident correct and ``n`` most confident wrong patients."""
    if n <= 0:
        return {}
    positive = pred.patient_probs[:, 1]
    predicted = (positive >= threshold).astype(int)
    confidence = np.abs(positive - threshold)
    groups = {"all": np.arange(len(positive))}
    if (pred.patient_labels >= 0).all():
        correct = predicted == pred.patient_labels
        groups = {"correct": np.flatnonzero(correct), "wrong": np.flatnonzero(~correct)}
    dataset = datamodule.datasets["all"]
    layer = cam_layer(model.net, model.hparams.backbone)
    figures = {}
    for group, members in groups.items():
        for rank, i in enumerate(members[np.argsort(-confidence[members])][:n]):
            rows = np.flatnonzero(pred.slice_patient == i)
            # the slice that speaks most for the patient's call
            best = rows[np.argmax(pred.probs[rows, predicted[i]])]
            image = _slice_image(datamodule, dataset, pred.patient_ids[best], int(pred.slice_index[best]))
            heat = grad_cam(model, layer, image[None].to(device), int(predicted[i]))[0].cpu().numpy()
            truth = (
                f", true {model.hparams.class_names[pred.patient_labels[i]]}"
                if pred.patient_labels[i] >= 0
                else ""
            )
            title = (
                f"{pred.patients[i]} slice {int(pred.slice_index[best])}: predicted "
                f"{model.hparams.class_names[predicted[i]]} (p={positive[i]:.2f}){truth}"
            )
            figures[f"gradcam_{group}_{rank + 1}"] = plots.gradcam_figure(
                image.numpy(), heat, datamodule.modalities, title
            )
    return figures


def _slice_image(datamodule: GliomaDataModule, dataset, patient_id: str, slice_index: int) -> torch.Tensor:
    position = datamodule.cached.position(patient_id)
    rows = np.flatnonzero((dataset.patient_positions == position) & (dataset.slice_indices == slice_index))
    return dataset.__getitems__([int(rows[0])])["image"][0].float()


def _save_figures(figures: dict[str, Any], out: Path, run: Path, split: str) -> None:
    """PNG files in ``out``, and the same figures in the run's TensorBoard under eval/<split>/."""
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run / "tensorboard"))
    try:
        for name, figure in figures.items():
            figure.savefig(out / f"{name}.png", dpi=110)
            writer.add_figure(f"eval/{split}/{name}", figure, close=False)
            plt.close(figure)
    finally:
        writer.close()


def format_report(report: dict[str, Any]) -> str:
    """A readable table of metrics.json."""
    lines = [
        f"Evaluated {report['n_patients']} patients ({report['n_slices']} slices), split={report['split']}, "
        f"aggregate={report['aggregate']}, threshold={report['threshold']:.3f}"
    ]
    if "patient" not in report:
        lines.append(report.get("note", ""))
        return "\n".join(lines)
    level = int(round(report["ci_level"] * 100))
    lines.append(
        f"{'metric':<18} {'patient':>8} {f'[{level}% CI]':>16}   {'slice':>8} {f'[{level}% CI]':>16}"
    )
    for name in METRICS:
        p, s = report["patient"][name], report["slice"][name]
        marker = "*" if p.get("unreliable") else ""
        lines.append(
            f"{name:<18} {_fmt(p['value']):>8} {_ci(p) + marker:>17}  {_fmt(s['value']):>8} {_ci(s):>16}"
        )
    counts = ", ".join(f"{k}: {v}" for k, v in report["class_counts"].items())
    base = report["majority_baseline"]
    lines.append(f"patients per class: {counts}; majority-class baseline accuracy {base['accuracy']:.3f}")
    if any(report["patient"][name].get("unreliable") for name in METRICS):
        lines.append(UNRELIABLE_NOTE)
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ci(entry: dict[str, float | None]) -> str:
    if entry["ci_low"] is None:
        return "n/a"
    return f"[{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


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

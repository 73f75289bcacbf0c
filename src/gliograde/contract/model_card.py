"""The model card of an export: what the model takes and gives, what it is for, what it was
trained on, how well it did (with intervals) and how the run was made. JSON and Markdown."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from gliograde import __version__
from gliograde.files.tables import read_table

INTENDED_USE = (
    "Research use only: estimating the WHO grade group (LGG vs HGG) of adult diffuse glioma from "
    "pre-operative multi-modal MRI prepared like the BraTS challenge data. Not a medical device; "
    "not for diagnosis or treatment decisions."
)
LIMITATIONS = [
    (
        "Sees 2D slices, not volumes: the patient call is the mean of slice probabilities over the slices "
        "the contract's rule selects."
    ),
    (
        "Expects BraTS preprocessing: skull-stripped, co-registered modalities on one voxel grid (the grid "
        "in the input contract); other preparations are out of scope."
    ),
    "Trained on one cohort (below); performance on other scanners, sites or populations is unknown.",
    "Intervals are patient-level bootstrap intervals on small splits: read them, not the point values.",
]


def _context(contract: dict[str, Any]) -> str:
    k = int(contract.get("context", 0))
    return f" each as slices z-{k}..z+{k} (modality-major)" if k else ""


def _crop(contract: dict[str, Any]) -> str:
    crop = contract.get("crop") or {"mode": "none"}
    if crop["mode"] == "none":
        return ""
    return f", cropped to {crop['size']}x{crop['size']} ({crop['mode']} crop)"


def build_card(
    model,
    checkpoint: Path,
    run: Path | None,
    calibration: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    **export_facts: Any,
) -> dict[str, Any]:
    """The card's content for ``model`` (a loaded TorchModel) from ``checkpoint`` of ``run``, with
    the stored temperature ``calibration`` it carries and the run's ``recipe`` it follows (None:
    none; predict.py then applies tta=none, no temperature, threshold 0.5)."""
    hparams = model.hparams
    contract = model.contract
    card: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gliograde_version": __version__,
        "model": {
            "backbone": hparams["backbone"],
            "in_channels": int(hparams["in_channels"]),
            "classes": list(model.classes),
            "checkpoint": str(checkpoint),
            "onnx": {
                "file": "model.onnx",
                "input": "image",
                "output": "probabilities",
                "logits_output": "logits",
                **export_facts,
            },
        },
        "input": (
            f"float32 [batch, {int(hparams['in_channels'])}, H, W] slices, channels "
            f"{contract['modalities']}{_context(contract)}, each modality z-scored over its nonzero voxels "
            f"and rounded to float16{_crop(contract)}"
        ),
        "output": f"probabilities [batch, {len(model.classes)}] in the order {list(model.classes)}",
        "patient_aggregation": "mean of the selected slices' probabilities",
        "input_contract": contract,
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
        "training": _training(run),
        "metrics": _metrics(run),
        "commands": _commands(run),
    }
    card["decision_threshold"] = _default_threshold() if recipe is None else _recipe_threshold(run, recipe)
    card["recipe"] = recipe
    card["calibration"] = calibration
    card["calibration_note"] = _calibration_note(calibration, card["decision_threshold"], card["metrics"])
    return card


def segmenter_section(
    segmenter, checkpoint_sha256: str, onnx_sha256: str, onnx_max_abs_diff: float
) -> dict[str, Any]:
    """The card's ``segmenter`` section for a bundled ``segmenter`` (an opened checkpoint
    Segmenter): its contract, checkpoint and graph checksums, its run's test Dice and command."""
    run = segmenter.path.parent.parent if segmenter.path.parent.name == "checkpoints" else None
    return {
        "checkpoint": str(segmenter.path),
        "checkpoint_sha256": checkpoint_sha256,
        "onnx": {"file": "segmenter.onnx", "input": "image", "output": "probability"},
        "segmenter_onnx_sha256": onnx_sha256,
        "onnx_max_abs_diff": onnx_max_abs_diff,
        "threshold": float(segmenter.threshold),
        "input": (
            f"float32 [batch, {_channels(segmenter.contract)}, H, W] slices, channels "
            f"{segmenter.contract['modalities']}{_context(segmenter.contract)}, z-scored as the classifier's"
        ),
        "output": "tumour probability [batch, 1, H, W]; tumour where above the threshold",
        "input_contract": segmenter.contract,
        "test_dice": _segmenter_dice(run),
        "run_dir": None if run is None else str(run),
        "command": _commands(run).get("train"),
    }


def _channels(contract: dict[str, Any]) -> int:
    from gliograde.data.batches.crops import input_channels

    return input_channels(len(contract["modalities"]), int(contract.get("context", 0)))


def _segmenter_dice(run: Path | None) -> dict[str, Any]:
    """Mean and minimum patient Dice of the segmenter run's test patients (metrics.json), with
    their number (splits.csv); None where not recorded."""
    out: dict[str, Any] = {"mean": None, "min": None, "n_patients": None}
    if run is None:
        return out
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    for key, name in (("test/patient_dice", "mean"), ("test/patient_dice_min", "min")):
        value = metrics.get(key) if isinstance(metrics, dict) else None
        out[name] = float(value) if isinstance(value, (int, float)) else None
    if (run / "splits.csv").is_file():
        out["n_patients"] = int((read_table(run / "splits.csv")["split"] == "test").sum())
    out["source"] = str(run / "metrics.json")
    return out


def _conditions(report: dict[str, Any]) -> dict[str, str]:
    """The TTA and calibration an evaluate.py report's probabilities were computed with."""
    method = (report.get("calibration") or {}).get("method", "none")
    return {"tta": report.get("tta", "none"), "calibration": method}


def _calibration_note(
    calibration: dict[str, Any] | None, threshold: dict[str, Any], metrics: dict[str, Any]
) -> str | None:
    """Says which of the card's threshold and metrics were not computed with the temperature the
    card carries (predict.py applies it, so its probabilities are not theirs); None when all were."""
    if not calibration:
        return None
    with_it = {"tta": calibration["tta"], "calibration": "temperature"}
    entries = [("decision threshold", threshold)] if "tta" in threshold else []
    entries += [(f"{split} metrics", entry) for split, entry in metrics.items()]
    others = [name for name, entry in entries if {k: entry[k] for k in with_it} != with_it]
    if not others:
        return None
    named = others[0] if len(others) == 1 else f"{', '.join(others[:-1])} and {others[-1]}"
    return (
        f"the {named} come from probabilities without this temperature (or with another TTA "
        f"than its tta={calibration['tta']}), while predict.py applies it (calibration=auto); "
        f"evaluate.py calibration=temperature tta={calibration['tta']} reports the calibrated ones"
    )


def _training(run: Path | None) -> dict[str, Any]:
    if run is None:
        return {"note": "exported from a lone checkpoint: no run directory, no cohort record"}
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    out: dict[str, Any] = {"run_dir": str(run), "cohort": (config.get("data") or {}).get("root")}
    splits = run / "splits.csv"
    if splits.is_file():
        rows = read_table(splits).to_dict("records")
        out["split_sizes"] = dict(Counter(r["split"] for r in rows))
        out["patients_per_class"] = dict(Counter(r["label"] or "unlabelled" for r in rows))
        out["patients_per_split_and_class"] = {
            split: dict(Counter(r["label"] for r in rows if r["split"] == split))
            for split in out["split_sizes"]
        }
    return out


def _metrics(run: Path | None) -> dict[str, Any]:
    """Patient-level val and test metrics: with intervals from evaluate.py's output when present,
    else the training run's point values."""
    if run is None:
        return {}
    out: dict[str, Any] = {}
    trained = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    for split in ("val", "test"):
        evaluated = run / "eval" / split / "metrics.json"
        if evaluated.is_file():
            report = json.loads(evaluated.read_text())
            if "patient" in report:
                out[split] = {
                    "source": str(evaluated),
                    "n_patients": report["n_patients"],
                    "ci_level": report["ci_level"],
                    "threshold": report["threshold"],
                    **_conditions(report),
                    "patient": report["patient"],
                }
                continue
        prefix = f"{split}/patient_"
        values = {k[len(prefix) :]: v for k, v in trained.items() if k.startswith(prefix)}
        if values:
            out[split] = {
                "source": str(run / "metrics.json"),
                "note": "training's point values; run evaluate.py for bootstrap intervals",
                "tta": "none",
                "calibration": "none",
                "patient": {
                    k: {"value": v, "ci_low": None, "ci_high": None} for k, v in sorted(values.items())
                },
            }
    return out


def _default_threshold() -> dict[str, Any]:
    """Without a recipe predict.py calls at 0.5, so the card says that, whatever an evaluation found."""
    return {"value": 0.5, "source": "no recipe: predict.py calls the more probable class (0.5)"}


def _recipe_threshold(run: Path | None, recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's threshold, and the probabilities it applies to."""
    calibration = "none" if recipe["temperature"] is None else "temperature"
    where = f"{run / 'recipe.json'}: " if run is not None else ""
    source = f"{where}{recipe['sources']['threshold']}"
    return {"value": recipe["threshold"], "source": source, "tta": recipe["tta"], "calibration": calibration}


def _commands(run: Path | None) -> dict[str, Any]:
    if run is None:
        return {}
    out: dict[str, Any] = {}
    overrides = run / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        out["train"] = shlex.join(["python", "train.py", *(yaml.safe_load(overrides.read_text()) or [])])
    for report in sorted((run / "eval").glob("*/metrics.json")) if (run / "eval").is_dir() else []:
        command = json.loads(report.read_text()).get("command")
        if command:
            out[f"evaluate ({report.parent.name})"] = command
    return out



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


def _interval_cell(entry: dict[str, Any]) -> str:
    """An interval as evaluate.py prints it: never a point, ``*`` on fewer than 10 of a class."""
    from gliograde.evaluation.intervals import bounds_text  # scikit-learn: only when writing a card

    star = "*" if entry.get("unreliable") and entry.get("value") is not None else ""
    if entry.get("ci_low") is not None:
        return bounds_text(entry["ci_low"], entry["ci_high"]) + star
    if entry.get("ci_note") and entry.get("value") is not None:
        return entry["ci_note"] + star
    return "n/a"


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


def render_markdown(card: dict[str, Any]) -> str:
    """MODEL_CARD.md: the card for people."""
    contract = card["input_contract"]
    threshold = card["decision_threshold"]
    lines = [
        f"# Model card: {card['model']['backbone']} glioma grade classifier ({' vs '.join(card['model']['classes'])})",
        "",
        f"Created {card['created']} with gliograde {card['gliograde_version']}.",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Limitations",
        "",
        *[f"- {item}" for item in card["limitations"]],
        "",
        "## Input contract",
        "",
        f"- Input: {card['input']}",
        f"- Output: {card['output']}; patient call: {card['patient_aggregation']}",
        (
            f"- Plane: {contract['plane']}; slice rule: {_rule(contract['slices'])}; "
            f"without a mask: {_without_mask(contract)}"
        ),
        f"- Image size: {contract['image_size']}; grid: {contract['grid']}",
        f"- Preprocessing: {contract['preprocess']}",
        f"- Decision threshold: {threshold['value']} ({_threshold_source(threshold)})",
        f"- Calibration: {_calibration_line(card.get('calibration'))}",
        f"- Recipe: {_recipe_line(card.get('recipe'))}",
        *([f"- Note: {card['calibration_note']}"] if card.get("calibration_note") else []),
        "",
        "## Training data",
        "",
        *[f"- {key}: {value}" for key, value in card["training"].items()],
        "",
        "## Patient-level metrics",
        "",
    ]
    for split, entry in card["metrics"].items():
        level = entry.get("ci_level")
        header = f"{round(level * 100)}% CI" if level else "CI"
        conditions = f"tta={entry['tta']}, calibration={entry['calibration']}"
        lines += [
            f"### {split} ({entry['source']}; {conditions})",
            "",
            f"| metric | value | {header} |",
            "|---|---|---|",
        ]
        for name, m in entry["patient"].items():
            ci = _interval_cell(m)
            value = "n/a" if m.get("value") is None else f"{m['value']:.3f}"
            lines.append(f"| {name} | {value} | {ci} |")
        lines.append("")
    if not card["metrics"]:
        lines += ["No metrics recorded.", ""]
    lines += ["## Commands", ""]
    lines += [f"- {name}: `{command}`" for name, command in card["commands"].items()] or ["- not recorded"]
    if card.get("segmenter"):
        lines += _segmenter_lines(card["segmenter"])
    onnx = card["model"]["onnx"]
    lines += [
        "",
        "## Files",
        "",
        (
            f"- model.onnx (sha256 {onnx.get('onnx_sha256')}), checked against "
            f"{card['model']['checkpoint']} to {onnx.get('onnx_max_abs_diff'):.1e}"
        ),
        *(
            [
                f"- segmenter.onnx (sha256 {card['segmenter']['segmenter_onnx_sha256']}), checked against "
                f"{card['segmenter']['checkpoint']} to {card['segmenter']['onnx_max_abs_diff']:.1e}"
            ]
            if card.get("segmenter")
            else []
        ),
        "",
    ]
    return "\n".join(lines)


def _segmenter_lines(section: dict[str, Any]) -> list[str]:
    """MODEL_CARD.md's Segmenter section."""
    contract = section["input_contract"]
    dice = section["test_dice"]
    if dice.get("mean") is None:
        measured = "not recorded (no test/patient_dice in the segmenter run's metrics.json)"
    else:
        patients = f" over {dice['n_patients']} test patients" if dice.get("n_patients") else ""
        low = "n/a" if dice.get("min") is None else f"{dice['min']:.3f}"
        measured = f"mean {dice['mean']:.3f}, min {low}{patients} ({dice['source']})"
    return [
        "",
        "## Segmenter",
        "",
        "A whole-tumour segmenter is bundled (segmenter.onnx): for patients without a tumour mask, its",
        "mask picks the slices of the classifier's slice rule.",
        "",
        f"- Input: {section['input']}",
        f"- Output: {section['output']} ({section['threshold']})",
        f"- Target: {contract.get('target')}; grid: {contract['grid']}",
        f"- Test patient Dice: {measured}",
        f"- Checkpoint: {section['checkpoint']} (sha256 {section['checkpoint_sha256']})",
        f"- Run: {section['run_dir']}; command: `{section['command'] or 'not recorded'}`",
    ]


def _threshold_source(threshold: dict[str, Any]) -> str:
    if "tta" not in threshold:
        return threshold["source"]
    return f"{threshold['source']}; tta={threshold['tta']}, calibration={threshold['calibration']}"


def _calibration_line(record: dict[str, Any] | None) -> str:
    if not record:
        return "none (probabilities as the network gives them)"
    return (
        f"temperature T={record['temperature']:.4f} on the logits, fitted on {len(record['val_patients'])} "
        f"validation patients with tta={record['tta']}, aggregate={record['aggregate']} (patient NLL "
        f"{record['nll_before']:.4f} -> {record['nll_after']:.4f}); predict.py applies it (calibration=auto)"
    )


def _recipe_line(recipe: dict[str, Any] | None) -> str:
    if not recipe:
        return "none: predict.py applies tta=none, no temperature, threshold 0.5"
    temperature = "none" if recipe["temperature"] is None else f"{recipe['temperature']:.4f}"
    return (
        f"tta={recipe['tta']}, temperature {temperature}, threshold {recipe['threshold']:.6g} "
        f"(recorded {recipe.get('updated')} by `{recipe.get('command')}`); predict.py follows it"
    )


def _rule(slices: dict[str, Any]) -> str:
    strategy = slices["strategy"]
    detail = {
        "tumor_topk": f"k={slices['k']}",
        "tumor_all": f"min_area={slices['min_area']}",
        "brain": f"min_brain_fraction={slices['min_brain_fraction']}",
        "middle": f"n={slices['n']}",
        "range": f"z {slices['z_min']}..{slices['z_max']}",
    }.get(strategy, "")
    return f"{strategy} ({detail})"


def _without_mask(contract: dict) -> str:
    """What evaluate and predict do with a patient without a tumour mask (gliograde.contract.mask_free)."""
    from gliograde.contract.mask_free import needs_mask

    if not needs_mask(contract):
        return "graded alike (the slice rule needs no mask)"
    return "refused unless mask_free=brain|middle|range (its slice rule) or segmenter=RUN is given"

"""A model card rendered as Markdown: what the model takes and gives, its intended use and limits,
its metrics with intervals, its recipe, and the segmenter it bundles."""

from __future__ import annotations

from typing import Any


def _interval_cell(entry: dict[str, Any]) -> str:
    """An interval as evaluate.py prints it: never a point, ``*`` on fewer than 10 of a class."""
    from gliograde.evaluation.intervals import bounds_text  # scikit-learn: only when writing a card

    star = "*" if entry.get("unreliable") and entry.get("value") is not None else ""
    if entry.get("ci_low") is not None:
        return bounds_text(entry["ci_low"], entry["ci_high"]) + star
    if entry.get("ci_note") and entry.get("value") is not None:
        return entry["ci_note"] + star
    return "n/a"


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

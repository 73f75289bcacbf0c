"""One self-contained page to read: metrics with intervals, figures (embedded PNG) and the model's
input contract. Every number shown carries its exact value and its place in the JSON it came
from (``data-key``/``data-value``), so the page can be checked against that file."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gliograde.atomic import write_text
from gliograde.segmentation.predicted import segmenter_note

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}figure{display:inline-block;margin:.5em}
img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em}
"""


def evaluation_page(report: Mapping[str, Any], images: Iterable[Path]) -> str:
    """The page of one evaluate.py output: ``report`` is its metrics.json content."""
    head = (
        f"Evaluated {report['n_patients']} patients ({report['n_slices']} slices) of the {report['split']} "
        f"split of {report['cohort']}; aggregate={report['aggregate']}, threshold={report['threshold']:.3f}, "
        f"tta={report.get('tta', 'none')}"
    )
    parts = [f"<p>{_e(head)}</p>", f"<p>Checkpoint: <code>{_e(report['checkpoint'])}</code></p>"]
    parts.append(_mask_free_note(report))
    if "patient" in report:
        level = round(report["ci_level"] * 100)
        rows = []
        for name in report["patient"]:
            cells = [f"<td>{_e(name)}</td>"]
            for scope in ("patient", "slice"):
                entry = report[scope][name]
                cells += [
                    _number(entry[key], f"{scope}.{name}.{key}") for key in ("value", "ci_low", "ci_high")
                ]
            rows.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(
            f"<h2>Metrics ({level}% bootstrap intervals over patients)</h2><table>"
            "<tr><th>metric</th><th>patient</th><th>CI low</th><th>CI high</th>"
            "<th>slice</th><th>CI low</th><th>CI high</th></tr>" + "".join(rows) + "</table>"
        )
        entries = [report[scope][name] for scope in ("patient", "slice") for name in report["patient"]]
        # an interval without bounds (n/a above) says why
        for note in sorted({e["ci_note"] for e in entries if e.get("ci_note") and e["value"] is not None}):
            parts.append(f'<p class="note">Interval n/a: {_e(note)}</p>')
        counts = ", ".join(
            f"{_e(k)}: {_number(v, f'class_counts.{k}', 'span')}" for k, v in report["class_counts"].items()
        )
        parts.append(f"<p>Patients per class: {counts}</p>")
    else:
        parts.append(f"<p>{_e(report.get('note', ''))}</p>")
    parts.append(_calibration(report.get("calibration") or {"method": "none"}))
    parts.append(_figures(images))
    return _page(f"Evaluation: {report['run_dir']} ({report['split']})", parts, report.get("input_contract"))


def _calibration(calibration: Mapping[str, Any]) -> str:
    """The calibration paragraph: the temperature and the patient ECE and Brier before and after."""
    if calibration["method"] != "temperature":
        return "<p>Calibration: none (probabilities as the model gives them)</p>"
    text = (
        f"<h2>Calibration</h2><p>Temperature scaling: T = "
        f"{_number(calibration['temperature'], 'calibration.temperature', 'span')}, fitted on "
        f"{_number(calibration['val_patients'], 'calibration.val_patients', 'span')} validation patients "
        f"(<code>{_e(calibration['file'])}</code>). The metrics above use the calibrated probabilities.</p>"
    )
    if calibration.get("note"):
        text += f'<p class="note" data-key="calibration.note">Note: {_e(calibration["note"])}</p>'
    scores = calibration.get("patient")
    if scores:
        rows = "".join(
            f"<tr><td>{_e(name)}</td>"
            + _number(entry["before"], f"calibration.patient.{name}.before")
            + _number(entry["after"], f"calibration.patient.{name}.after")
            + "</tr>"
            for name, entry in scores.items()
        )
        text += f"<table><tr><th>patient metric</th><th>before</th><th>after</th></tr>{rows}</table>"
    return text


def prediction_page(report: Mapping[str, Any], folder: Path) -> str:
    """The page of one predict.py output: ``report`` is its predictions.json content."""
    classes = report["classes"]
    header = "".join(f"<th>p({_e(c)})</th>" for c in classes)
    rows = []
    for i, row in enumerate(report["patients"]):
        probs = "".join(_number(row["probabilities"][c], f"patients.{i}.probabilities.{c}") for c in classes)
        rows.append(
            f"<tr><td>{_e(row['patient_id'])}</td>{probs}<td>{_e(row['prediction'])}</td>"
            f"{_number(row['n_slices'], f'patients.{i}.n_slices')}<td>{_e(row['slice_rule'])}</td></tr>"
        )
    parts = [
        (
            f"<p>Model: <code>{_e(report['model'])}</code> ({_e(report['model_kind'])}); decision threshold "
            f"{_number(report['threshold'], 'threshold', 'span')}; tta={_e(report.get('tta', 'none'))}; "
            f"{_prediction_calibration(report.get('calibration') or {'method': 'none'})}</p>"
        ),
        (
            f"<h2>Predictions</h2><table><tr><th>patient</th>{header}<th>prediction</th><th>slices</th>"
            f"<th>slice rule</th></tr>{''.join(rows)}</table>"
        ),
    ]
    parts.append(_mask_free_note(report))
    if report.get("skipped"):
        items = "".join(
            f"<li><code>{_e(s['patient_id'])}</code>: {_e(s['file'])}: {_e(s['problem'])}</li>"
            for s in report["skipped"]
        )
        parts.append(f"<h2>Skipped patients (on_error=skip)</h2><ul>{items}</ul>")
    for row in report["patients"]:
        parts.append(f"<h3>{_e(row['patient_id'])}</h3>")
        parts.append(_figures(folder / name for name in row["figures"].values()))
    return _page("Predictions", parts, report["input_contract"])


def _mask_free_note(report: Mapping[str, Any]) -> str:
    """The notes on patients graded without a tumour mask (see gliograde.mask_free) and on the
    segmenter's masks; empty if none."""
    notes = []
    if report.get("mask_free_note"):
        notes.append(f'<p class="note" data-key="mask_free_note">Note: {_e(report["mask_free_note"])}</p>')
    seg = segmenter_note(report.get("segmenter"))
    if seg:
        notes.append(f'<p class="note" data-key="segmenter">Note: {_e(seg)}</p>')
    return "".join(notes)


def _prediction_calibration(calibration: Mapping[str, Any]) -> str:
    if calibration["method"] != "temperature":
        return "no calibration"
    return (
        f"calibrated: temperature {_number(calibration['temperature'], 'calibration.temperature', 'span')} "
        f"from <code>{_e(calibration['source'])}</code>"
    )


def write_page(path: Path, page: str) -> None:
    """Write the page atomically."""
    write_text(path, page)


def _page(title: str, parts: list[str], contract: Mapping[str, Any] | None) -> str:
    body = [f"<h1>{_e(title)}</h1>", *parts]
    if contract is not None:
        body.append(f"<h2>Input contract</h2><pre>{_e(json.dumps(contract, indent=2))}</pre>")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _figures(paths: Iterable[Path]) -> str:
    out = []
    for path in paths:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        name = Path(path).stem
        out.append(
            f'<figure><img alt="{_e(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(name)}</figcaption></figure>"
        )
    return "\n".join(out)


def _number(value: Any, key: str, tag: str = "td") -> str:
    """A number shown rounded, with its exact value and JSON key in attributes."""
    if value is None:
        return f'<{tag} data-key="{_e(key)}" data-value="null">n/a</{tag}>'
    shown = str(value) if isinstance(value, int) else f"{value:.3f}"
    return f'<{tag} data-key="{_e(key)}" data-value="{_e(repr(value))}">{shown}</{tag}>'


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)

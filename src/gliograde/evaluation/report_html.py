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

from gliograde.files.atomic import write_text
from gliograde.evaluation import summary

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}figure{display:inline-block;margin:.5em}
img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em}
h1{font-size:1.5em;overflow-wrap:anywhere}p.headline{font-size:1.1em;margin:.3em 0}
p.warning{color:#a00;font-weight:bold}p.note{margin:.2em 0;font-size:.95em}
"""


def evaluation_page(report: Mapping[str, Any], images: Iterable[Path]) -> str:
    """The page of one evaluate.py output: ``report`` is its metrics.json content. It says what
    evaluate.py prints (the same lines, from :mod:`gliograde.evaluation.summary`), then the
    per-patient table and the figures."""
    parts = [
        _lines(summary.evaluation_headline(report), "headline"),
        f"<p>{_e(summary.describe(report))}</p>",
    ]
    parts.append(
        f"<p>Checkpoint: <code>{_e(report['checkpoint'])}</code>; "
        f"cohort: <code>{_e(report['cohort'])}</code></p>"
    )
    if "patient" in report:
        level = round(report["ci_level"] * 100)
        rows = []
        for name in report["patient"]:
            patient, slices = report["patient"][name], report["slice"][name]
            rows.append(
                f"<tr><td>{_e(name)}</td>{_number(patient['value'], f'patient.{name}.value')}"
                f"{_interval(patient, f'patient.{name}')}<td>{_e(patient['ci_method'])}</td>"
                f"{_number(slices['value'], f'slice.{name}.value')}{_interval(slices, f'slice.{name}')}</tr>"
            )
        parts.append(
            f"<h2>Metrics</h2><table><tr><th>metric</th><th>patient</th><th>{level}% CI</th><th>interval</th>"
            f"<th>slice</th><th>{level}% CI</th></tr>" + "".join(rows) + "</table>"
        )
    parts.append(_lines(summary.evaluation_notes(report), "note"))
    parts.append(_patients(report.get("patients") or [], report["classes"]))
    parts.append(_figures(images))
    return _page(f"Evaluation: {report['run_dir']} ({report['split']})", parts, report.get("input_contract"))


def prediction_page(report: Mapping[str, Any], folder: Path) -> str:
    """The page of one predict.py output: ``report`` is its predictions.json content; the lines
    predict.py prints, the per-patient table, then each patient's figures."""
    parts = [
        _lines(summary.prediction_headline(report), "headline"),
        _patients(report["patients"], report["classes"]),
        _lines(summary.prediction_notes(report), "note"),
    ]
    if report.get("skipped"):
        items = "".join(
            f"<li><code>{_e(s['patient_id'])}</code>: {_e(s['file'])}: {_e(s['problem'])}</li>"
            for s in report["skipped"]
        )
        parts.append(f"<h2>Skipped patients (on_error=skip)</h2><ul>{items}</ul>")
    with_figures = [row for row in report["patients"] if row["figures"]]
    if with_figures:
        parts.append("<h2>Figures</h2>")
    for row in with_figures:
        parts.append(f"<h3>{_e(row['patient_id'])}</h3>")
        parts.append(_figures(folder / name for name in row["figures"].values()))
    return _page(f"Predictions of {len(report['patients'])} patient(s)", parts, report["input_contract"])


# Columns of a per-patient row that the table does not show: kept in the JSON and the CSV.
_NOT_SHOWN = {
    "score", "note", "predicted_mask", "resampled", "figures", "files", "fingerprints", "order_fingerprints"
}


def _patients(rows: list[Mapping[str, Any]], classes: list[str]) -> str:
    """The per-patient table: id, label when known, probability, prediction, slices, slice rule,
    then any other value the rows carry (e.g. the tumour volume, a quality check)."""
    if not rows:
        return ""
    first = ["patient_id", "label", "probability", "probabilities", "prediction", "n_slices", "slice_rule"]
    columns = [c for c in first if any(c in row for row in rows)]
    extra = [
        key
        for key in dict.fromkeys(k for row in rows for k in row)
        if key not in first and key not in _NOT_SHOWN
        and all(isinstance(row.get(key), (str, int, float, bool, type(None))) for row in rows)
        and any(row.get(key) not in (None, "") for row in rows)
    ]
    names = {"patient_id": "patient", "n_slices": "slices", "slice_rule": "slice rule"}
    header = []
    for column in columns + extra:
        if column == "probability":
            header.append(f"<th>p({_e(classes[-1])})</th>")
        elif column == "probabilities":
            header += [f"<th>p({_e(c)})</th>" for c in classes]
        else:
            header.append(f"<th>{_e(names.get(column, column.replace('_', ' ')))}</th>")
    body = []
    for i, row in enumerate(rows):
        cells = []
        for column in columns + extra:
            value = row.get(column)
            if column == "probabilities":
                cells += [_number((value or {}).get(c), f"patients.{i}.probabilities.{c}") for c in classes]
            elif isinstance(value, (int, float)) and not isinstance(value, bool) or (
                value is None and column in ("probability", "n_slices", "tumour_ml")
            ):
                cells.append(_number(value, f"patients.{i}.{column}"))
            else:
                cells.append(f"<td>{_e('' if value is None else value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<h2>Patients</h2><table><tr>{''.join(header)}</tr>{''.join(body)}</table>"


def _lines(lines: list[str], kind: str) -> str:
    """Summary lines, one paragraph each; a warning stands out."""
    out = []
    for line in lines:
        css = "warning" if line.startswith("Warning:") else kind
        out.append(f'<p class="{css}">{_e(line)}</p>')
    return "\n".join(out)


def _interval(entry: Mapping[str, Any], key: str) -> str:
    """The interval as the terminal prints it, with the exact bounds in attributes."""
    low, high = entry.get("ci_low"), entry.get("ci_high")
    return (
        f'<td data-key="{_e(key)}.ci_low" data-value="{_e("null" if low is None else repr(low))}">'
        f'<span data-key="{_e(key)}.ci_high" data-value="{_e("null" if high is None else repr(high))}">'
        f"{_e(summary.interval_text(entry))}</span></td>"
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

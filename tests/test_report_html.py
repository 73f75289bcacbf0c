"""report.html of evaluate.py and predict.py: self-contained, every image present and every
number equal to the JSON it reports."""

from __future__ import annotations

import base64
import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers.commands import REPO, run_python
from helpers.runs import tiny_run
from hydra import compose, initialize_config_dir

from gliograde.inference.runner import predict

# trains a model in a `python train.py` subprocess
pytestmark = pytest.mark.slow


class _Page(HTMLParser):
    """Images (alt -> decoded bytes), numbers (data-key -> data-value) and external references."""

    def __init__(self, text: str):
        super().__init__()
        self.images: dict[str, bytes] = {}
        self.numbers: dict[str, str] = {}
        self.external: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            prefix = "data:image/png;base64,"
            assert attrs["src"].startswith(prefix)
            self.images[attrs["alt"]] = base64.b64decode(attrs["src"][len(prefix) :], validate=True)
        if "data-key" in attrs:
            self.numbers[attrs["data-key"]] = attrs["data-value"]
        for name in ("href", "src"):
            if name in attrs and not attrs[name].startswith("data:"):
                self.external.append(attrs[name])


def _lookup(data, key: str):
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def _check_numbers(page: _Page, data: dict) -> None:
    assert page.numbers
    for key, shown in page.numbers.items():
        value = _lookup(data, key)
        assert (shown == "null" and value is None) or float(shown) == value, key


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    return tiny_run(tmp_path_factory)


def test_evaluation_report_embeds_every_figure_and_number(run, tmp_path):
    out = tmp_path / "eval"
    result = run_python(
        "evaluate.py", f"run_dir={run['run']}", "bootstrap=50", "gradcam_n=1", f"output_dir={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    page = _Page((out / "report.html").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    pngs = {p.stem: p.read_bytes() for p in out.glob("*.png")}
    assert "roc" in pngs and any(name.startswith("gradcam_") for name in pngs)
    assert page.images == pngs and not page.external
    _check_numbers(page, metrics)
    for name in metrics["patient"]:
        assert f"patient.{name}.ci_low" in page.numbers and f"slice.{name}.value" in page.numbers
    assert "Input contract" in (out / "report.html").read_text()


def test_prediction_report_embeds_every_patient_figure_and_probability(run, tmp_path):
    with open(run["run"] / "splits.csv", newline="") as fh:
        patient = next(r["patient_id"] for r in csv.DictReader(fh) if r["split"] == "test")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=[f"ckpt={run['run']}", f"input={run['cohort'] / patient}", f"output_dir={tmp_path}"],
        )
    predict(cfg)
    page = _Page((tmp_path / "report.html").read_text())
    report = json.loads((tmp_path / "predictions.json").read_text())
    assert page.images == {p.stem: p.read_bytes() for p in tmp_path.glob("*.png")}
    assert set(page.images) == {f"{patient}_slices", f"{patient}_gradcam"} and not page.external
    _check_numbers(page, report)
    shown = {"patients.0.probabilities.LGG", "patients.0.probabilities.HGG", "patients.0.n_slices"}
    assert shown <= set(page.numbers)

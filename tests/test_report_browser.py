"""evaluate.py's (labelled, unlabelled, calibrated) and predict.py's report.html as a reader gets
them: every printed summary line on the page, every number the JSON's, a per-patient table, no
heading twice; and rendered by headless Chromium (where /usr/bin/chromium is installed) to a PNG
that is not blank."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers.commands import REPO, run_python
from helpers.pages import Page, check_numbers
from helpers.runs import tiny_run
from hydra import compose, initialize_config_dir

from gliograde.data.synthetic.generator import generate_cohort
from gliograde.evaluation.report import format_report
from gliograde.inference.runner import format_predictions, predict

# trains a model in a `python train.py` subprocess
pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    return tiny_run(tmp_path_factory)


def screenshot(page: Path, png: Path, profile: Path) -> None:
    """``page`` rendered by headless Chromium into ``png`` (1200 x 3000 pixels)."""
    subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1200,3000",
            page.resolve().as_uri(),
        ],
        check=True, capture_output=True, timeout=120,
    )


def check_page(folder: Path, data: dict, printed: list[str], patients: list[str], tmp_path: Path) -> None:
    """The page in ``folder`` says every line of ``printed``, shows every number as the JSON
    ``data`` holds it and has one table row per patient; rendered, it is not blank."""
    html = folder / "report.html"
    page = Page(html.read_text())
    for line in printed:
        assert line in page.paragraphs, line
    check_numbers(page, data)
    assert len(page.headings) == len(set(page.headings)), page.headings
    table = next(t for t in page.tables if t[0][0] == "patient")
    assert [row[0] for row in table[1:]] == patients
    if not CHROMIUM.exists():
        return
    png = tmp_path / f"{folder.name}.png"
    screenshot(html, png, tmp_path / f"profile-{folder.name}")
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (1200, 3000)
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # text, tables and figures, not an empty page


def _summary_lines(text: str) -> list[str]:
    """The printed lines that are sentences (the metrics table's rows are cells on the page)."""
    return [line.strip() for line in text.splitlines() if line.strip() and "  " not in line.strip()]


def _evaluated(out: Path, result) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    printed = format_report(metrics)
    assert printed in result.stdout  # the terminal prints what the JSON says
    return metrics


def test_the_labelled_and_calibrated_evaluation_pages_say_what_the_terminal_says(run, tmp_path):
    # a copy: threshold=youden records the run's recipe, which other tests' runs must not see
    copy = tmp_path / "run"
    shutil.copytree(run["run"], copy)
    for name, options in (("labelled", []), ("calibrated", ["calibration=temperature", "threshold=youden"])):
        out = tmp_path / name
        result = run_python(
            "evaluate.py", f"run_dir={copy}", "bootstrap=50", "gradcam_n=1", f"output_dir={out}", *options
        )
        metrics = _evaluated(out, result)
        lines = _summary_lines(format_report(metrics))
        auroc, balanced = (metrics["patient"][name]["value"] for name in ("auroc", "balanced_accuracy"))
        assert lines[0].startswith(f"Patient AUROC {auroc:.3f} ")
        assert f", balanced accuracy {balanced:.3f} " in lines[0]
        assert lines[1].startswith(f"Threshold {metrics['threshold']:.3f}") and "on p(HGG)" in lines[1]
        calls = [p["prediction"] for p in metrics["patients"]]
        assert lines[2] == f"Called: LGG {calls.count('LGG')}, HGG {calls.count('HGG')}"
        if name == "calibrated":
            assert "threshold=youden on" in lines[1]
            assert any(line.startswith("Calibration: temperature scaling, T=") for line in lines)
        else:
            assert lines[1].endswith("evaluate.py threshold=0.5")
        assert any(line.startswith("Majority-class baseline:") for line in lines)
        check_page(out, metrics, lines, [p["patient_id"] for p in metrics["patients"]], tmp_path)


def test_the_unlabelled_evaluation_page_lists_every_patient(run, tmp_path):
    """Like README's BraTS validation example: no Grade column, no masks."""
    source, other = tmp_path / "fresh", tmp_path / "validation"
    generate_cohort(source, patients=3, seed=55, shape=(40, 40, 20), lgg_fraction=0.4, compress=False)
    for i, folder in enumerate(sorted(p for p in source.iterdir() if p.is_dir())):
        new_id = f"BraTS20_Validation_{i + 1:03d}"
        (other / new_id).mkdir(parents=True)
        for modality in ("flair", "t1", "t1ce", "t2"):
            shutil.copy(folder / f"{folder.name}_{modality}.nii", other / new_id / f"{new_id}_{modality}.nii")
    (other / "name_mapping_validation_data.csv").write_text(
        "BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,BraTS_2019_subject_ID,"
        "BraTS_2020_subject_ID\n"
        + "".join(f"NA,NA,NA,NA,BraTS20_Validation_{i + 1:03d}\n" for i in range(3))
    )
    out = tmp_path / "unlabelled"
    result = run_python(
        "evaluate.py", f"run_dir={run['run']}", f"data.root={other}",
        "data.labels.file=name_mapping_validation_data.csv", f"data.cache_dir={tmp_path / 'cache'}",
        "split=all", "mask_free=brain", "gradcam_n=1", f"output_dir={out}",
    )
    metrics = _evaluated(out, result)
    lines = _summary_lines(format_report(metrics))
    assert lines[0] == "3 patients, no labels: predictions only"
    ids = [f"BraTS20_Validation_{i + 1:03d}" for i in range(3)]
    check_page(out, metrics, lines, ids, tmp_path)
    table = next(t for t in Page((out / "report.html").read_text()).tables if t[0][0] == "patient")
    assert "label" not in table[0] and {row[table[0].index("slice rule")] for row in table[1:]} == {"brain"}


def test_the_prediction_page_says_what_the_terminal_says(run, tmp_path, capsys):
    with open(run["run"] / "splits.csv", newline="") as fh:
        patient = next(r["patient_id"] for r in csv.DictReader(fh) if r["split"] == "test")
    out = tmp_path / "predict"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=[f"ckpt={run['run']}", f"input={run['cohort'] / patient}", f"output_dir={out}"],
        )
    predict(cfg)
    report = json.loads((out / "predictions.json").read_text())
    assert format_predictions(report) in capsys.readouterr().out
    lines = [line for line in format_predictions(report).splitlines() if not line.startswith("  ")]
    assert lines[1].startswith("Threshold 0.500 on p(HGG)")
    check_page(out, report, lines, [patient], tmp_path)
    page = Page((out / "report.html").read_text())
    assert page.headings.count("Patients") == 1 and "Predictions" not in page.headings[1:]

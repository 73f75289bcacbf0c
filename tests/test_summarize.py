"""python -m gliograde.summarize on hand-made sweeps: any multirun, and cross-validation folds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.commands import run_python

from gliograde.summarize import SummaryError, main, summarize_sweep, sweep_table

CLASSES = ("LGG", "HGG")


def _job(
    sweep: Path,
    name: str,
    overrides: list[str] | None,
    stages: dict[str, tuple[list[str], list[int], list[float]]],
    fold: int | None = None,
    lr: float = 0.001,
    monitor: tuple[str, str] = ("val/patient_auroc", "max"),
    extra: dict[str, float] | None = None,
) -> Path:
    """A finished job: config.yaml, metrics.json, predictions_<stage>.csv, .hydra/overrides.yaml."""
    job = sweep / name
    job.mkdir(parents=True)
    config = {
        "monitor": monitor[0],
        "monitor_mode": monitor[1],
        "data": {"fold": fold},
        "model": {"optimizer": {"lr": lr}},
        "paths": {"output_dir": str(job)},
    }
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    if overrides is not None:
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    metrics = {}
    for stage, (patients, labels, probs) in stages.items():
        with open(job / f"predictions_{stage}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["patient_id", "label", *(f"prob_{c}" for c in CLASSES)])
            for p, y, q in zip(patients, labels, probs):
                writer.writerow([p, CLASSES[y], f"{1 - q:.6f}", f"{q:.6f}"])
        metrics[f"{stage}/patient_accuracy"] = float(np.mean((np.array(probs) >= 0.5) == np.array(labels)))
    (job / "metrics.json").write_text(json.dumps({**metrics, **(extra or {})}))
    return job


PATIENTS = [f"P{i}" for i in range(8)]
LABELS = [1, 1, 1, 1, 0, 0, 0, 0]


def _lr_sweep(root: Path, with_overrides: bool = True) -> Path:
    sweep = root / "lr"
    # validation AUROC: job 0 -> 0.75, job 1 -> 1.0, job 2 -> 0.5
    val_probs = {
        "0": [0.9, 0.8, 0.3, 0.2, 0.7, 0.6, 0.1, 0.05],
        "1": [0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1],
        "2": [0.5] * 8,
    }
    for name, lr in zip("012", (0.001, 0.01, 0.1)):
        overrides = [f"model.optimizer.lr={lr}", "trainer=cpu"] if with_overrides else None
        stages = {"val": (PATIENTS, LABELS, val_probs[name]), "test": (PATIENTS, LABELS, val_probs["1"])}
        _job(sweep, name, overrides, stages, lr=lr)
    return sweep


@pytest.mark.slow
def test_any_sweep_one_row_per_job_sorted_by_the_monitor(tmp_path):
    sweep = _lr_sweep(tmp_path)
    result = run_python("-m", "gliograde.summarize", str(sweep), "--bootstrap", "20")
    assert result.returncode == 0, result.stderr
    assert "swept: model.optimizer.lr" in result.stdout and "pooled out-of-fold" not in result.stdout
    table = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    assert [r["job"] for r in table] == ["1", "0", "2"]
    assert [float(r["model.optimizer.lr"]) for r in table] == [0.01, 0.001, 0.1]
    assert float(table[0]["val/patient_auroc"]) == 1.0 and float(table[1]["val/patient_auroc"]) == 0.75
    # 4 per class: honest intervals, flagged as unreliable
    assert float(table[0]["val/patient_auroc_ci_low"]) < 0.9
    assert table[0]["val/patient_auroc_unreliable"] == "True"
    assert float(table[0]["test/patient_accuracy_ci_low"]) == pytest.approx(8 / (8 + 1.959964**2), abs=1e-5)
    markdown = (sweep / "sweep_summary.md").read_text()
    assert "| job | model.optimizer.lr | val/patient_auroc [95% CI]" in markdown
    assert "1.000 [" in markdown and "unreliable" in markdown
    assert (sweep / "sweep_summary.png").read_bytes()[:4] == b"\x89PNG"
    assert not (sweep / "cv_summary.json").exists()


def test_overrides_fall_back_to_the_config_keys_that_differ(tmp_path):
    sweep = _lr_sweep(tmp_path, with_overrides=False)
    table, swept, monitor, mode = sweep_table(sweep, resamples=0)
    assert swept == ["model.optimizer.lr"] and monitor == "val/patient_auroc" and mode == "max"
    assert table["job"].tolist() == ["1", "0", "2"]


def test_a_slice_level_monitor_sorts_lowest_first_and_mixed_monitors_are_refused(tmp_path):
    sweep = tmp_path / "loss"
    val = (PATIENTS, LABELS, [0.5] * 8)
    for name, loss in zip("012", (0.7, 0.3, 0.5)):
        extra = {"val/loss": loss}
        _job(sweep, name, [f"seed={name}"], {"val": val}, monitor=("val/loss", "min"), extra=extra)
    table, _, monitor, mode = sweep_table(sweep, resamples=0)
    assert (monitor, mode) == ("val/loss", "min") and table["job"].tolist() == ["1", "2", "0"]
    _job(sweep, "3", ["seed=3"], {"val": val})
    with pytest.raises(SummaryError, match="monitor different metrics"):
        sweep_table(sweep, resamples=0)


def test_cross_validation_keeps_its_fold_summary(tmp_path, capsys):
    sweep = tmp_path / "cv"
    test = (["T0", "T1", "T2", "T3"], [1, 1, 0, 0], [0.8, 0.6, 0.4, 0.2])
    for fold in range(3):
        patients = [f"V{fold}_{i}" for i in range(4)]
        val = (patients, [1, 1, 0, 0], [0.9, 0.4 + 0.1 * fold, 0.5, 0.1])
        overrides = ["data.folds=3", f"data.fold={fold}", "trainer=cpu"]
        _job(sweep, str(fold), overrides, {"val": val, "test": test}, fold=fold)
    assert main([str(sweep), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "pooled out-of-fold validation (12 patients)" in out
    data = json.loads((sweep / "cv_summary.json").read_text())
    assert data["n_folds"] == 3 and [f["fold"] for f in data["folds"]] == [0, 1, 2]
    pooled = data["pooled_val"]["metrics"]
    assert pooled["accuracy"]["ci_method"] == "wilson" and pooled["auroc"]["unreliable"]
    rows = list(csv.reader(open(sweep / "cv_summary.csv")))
    assert [r[0] for r in rows[1:]] == ["0", "1", "2", "mean", "std"]
    assert (sweep / "sweep_summary.md").is_file()


def test_tiny_jobs_and_bad_folders(tmp_path, capsys):
    sweep = tmp_path / "tiny"
    _job(sweep, "0", ["seed=1"], {"val": (["A"], [1], [0.7]), "test": (["B", "C"], [0, 0], [0.5, 0.5])})
    _job(sweep, "1", ["seed=2"], {"val": (["A"], [1], [0.2])})  # no test predictions
    table, swept, _, _ = summarize_sweep(sweep, resamples=5)
    assert swept == ["seed"] and len(table) == 2
    row = table.set_index("job").loc["0"]
    assert pd.isna(row["val/patient_auroc"]) and row["val/patient_sensitivity"] == 1.0
    assert row["test/patient_specificity"] == 0.0 and row["test/patient_specificity_ci_high"] > 0.5
    with pytest.raises(SummaryError, match="no finished jobs"):
        summarize_sweep(tmp_path, resamples=0)
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "nowhere")])
    assert stop.value.code == 2 and "no such directory" in capsys.readouterr().err

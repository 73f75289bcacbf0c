"""python -m gliograde.summarize on hand-made sweeps: any multirun, and cross-validation folds."""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.commands import run_python
from helpers.disk import refuse_writes

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


def _failed_job(sweep: Path, name: str, overrides: list[str], marker: dict | None) -> Path:
    """A job folder as a failed (marker) or killed (no marker) job leaves it: Hydra's records only."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if marker is not None:
        (job / "failed.json").write_text(json.dumps(marker))
    return job


def test_failed_jobs_are_listed_and_their_keys_still_count_as_swept(tmp_path, capsys):
    sweep = tmp_path / "roots"
    marker = {"job": "0", "kind": "user error", "message": "/data/a: no patient folders"}
    _failed_job(sweep, "0", ["data.root=/data/a"], marker)
    _job(sweep, "1", ["data.root=/data/b"], {"val": (PATIENTS, LABELS, [0.6] * 4 + [0.4] * 4)})
    _failed_job(sweep, "2", ["data.root=/data/c"], None)  # killed: no metrics, no marker
    assert main([str(sweep), "--bootstrap", "10"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("Scoring 3 jobs") == 1
    lines = captured.out.splitlines()
    assert lines[0] == "1 jobs, best val/patient_auroc first; swept: data.root"
    assert lines[2] == "  job 0    FAILED: user error: /data/a: no patient folders  data.root=/data/a"
    assert lines[3].startswith("  job 2    UNFINISHED: no metrics.json")
    table = pd.read_csv(sweep / "sweep_summary.csv", dtype=str, keep_default_na=False)
    assert table["job"].tolist() == ["1", "0", "2"]
    assert table["status"].tolist() == ["finished", "failed", "unfinished"]
    markdown = (sweep / "sweep_summary.md").read_text()
    assert "| 1 | /data/b |" in markdown and "- job 0 (data.root=/data/a): failed: user error:" in markdown


def test_a_key_the_command_line_swept_counts_when_one_job_is_left(tmp_path):
    sweep = tmp_path / "one_left"
    _job(sweep, "1", ["data.root=/data/b", "seed=1"], {"val": (PATIENTS, LABELS, [0.6] * 8)})
    (sweep / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"overrides": {"task": ["data.root=/data/a,/data/b", "seed=1"]}}})
    )
    assert sweep_table(sweep, resamples=0)[1] == ["data.root"]


def test_unrelated_runs_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys):
    runs = tmp_path / "runs"
    val = {"val": (PATIENTS, LABELS, [0.9, 0.8, 0.3, 0.2, 0.7, 0.6, 0.1, 0.05])}
    _job(runs, "2026-11-30_10-00-00", ["data.root=/data/a", "model.optimizer.lr=0.01"], val)
    _job(runs, "2026-11-30_11-00-00", ["data.root=/data/b"], val, fold=2)
    with pytest.raises(SystemExit) as stop:
        main([str(runs), "--bootstrap", "10"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert "are not from one sweep (only job 2026-11-30_10-00-00 sets model.optimizer.lr)" in err
    assert not list(runs.glob("sweep_summary*")) and not list(runs.glob(".*tmp*"))

    grades = tmp_path / "grades"  # same keys, different classes: AUROCs of different questions
    _job(grades, "0", ["seed=0"], val)
    idh = _job(grades, "1", ["seed=1"], val)
    text = (idh / "predictions_val.csv").read_text().replace("prob_LGG,prob_HGG", "prob_wildtype,prob_mutant")
    (idh / "predictions_val.csv").write_text(text.replace(",LGG,", ",wildtype,").replace(",HGG,", ",mutant,"))
    with pytest.raises(SummaryError, match=r"job 1 classifies \['wildtype', 'mutant'\] but job 0"):
        summarize_sweep(grades, resamples=0)
    assert not list(grades.glob("sweep_summary*"))


def test_runs_without_hydra_records_and_with_missing_keys_are_summarized(tmp_path):
    """Config differences as the overrides: a key one run lacks is unset there, not a TypeError."""
    sweep = tmp_path / "plain"
    val = {"val": (PATIENTS, LABELS, [0.6] * 8)}
    _job(sweep, "0", None, val, fold=1, lr=0.01)
    _job(sweep, "1", None, val, lr=0.001)
    config = yaml.safe_load((sweep / "1" / "config.yaml").read_text())
    del config["data"]
    (sweep / "1" / "config.yaml").write_text(yaml.safe_dump(config))
    table, swept, _, _ = summarize_sweep(sweep, resamples=0)
    assert swept == ["data.fold", "model.optimizer.lr"] and len(table) == 2
    assert (sweep / "sweep_summary.png").read_bytes()[:4] == b"\x89PNG"


def test_outputs_are_written_together_or_not_at_all(tmp_path, monkeypatch):
    sweep = _lr_sweep(tmp_path)

    def broken_plot(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr("gliograde.summarize.plot_png", broken_plot)
    with pytest.raises(RuntimeError, match="plotting failed"):
        main([str(sweep), "--bootstrap", "5"])
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "2"]


def test_points_that_share_a_value_sit_side_by_side():
    from gliograde.sweeps.plot import axis_positions, dodge

    x = dodge(np.array([1e-3, 1e-3, 1e-2, 1e-1]), log=True)
    assert x[0] < 1e-3 < x[1] and x[2:].tolist() == [1e-2, 1e-1]
    assert np.log10(x[1]) - np.log10(x[0]) == pytest.approx(2 * 0.08)  # a fraction of the decades shown
    positions, ticks, log = axis_positions(pd.Series(["resnet18", "resnet34", "resnet18", None]))
    assert ticks == ["(unset)", "resnet18", "resnet34"] and not log
    spread = dodge(positions, categorical=True)
    assert spread[0] != spread[2] and abs(spread[0] - 1) < 0.5 and abs(spread[2] - 1) < 0.5
    numbers, ticks, log = axis_positions(pd.Series(["1e-4", "0.01", 0.001]))
    assert ticks is None and log and numbers.tolist() == [1e-4, 0.01, 0.001]
    mixed, ticks, _ = axis_positions(pd.Series(["0.1", "abc", 1.5]))  # no TypeError on a mix
    assert ticks == ["0.1", "1.5", "abc"]


def test_bootstrap_intervals_of_a_job_take_well_under_a_second(tmp_path):
    """1000 resamples of 12 patients took 6.5 s of CPU through scikit-learn's checks."""
    import time

    from gliograde.evaluation.intervals import patient_intervals

    rng = np.random.default_rng(0)
    labels = np.array([1] * 6 + [0] * 6)
    probs = rng.random(12)
    start = time.process_time()
    result = patient_intervals(labels, probs, resamples=1000)
    assert time.process_time() - start < 1.5
    assert result["f1"]["ci_low"] is not None and result["ece"]["ci_method"] == "bootstrap"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_sweep_folder_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys, code):
    sweep = _lr_sweep(tmp_path)
    refused = refuse_writes(monkeypatch, sweep, code)
    with pytest.raises(SystemExit) as stop:
        main([str(sweep), "--bootstrap", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert refused  # the writes did reach the refusing place
    monkeypatch.undo()
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "2"]


def test_an_interval_that_cannot_be_estimated_says_why_in_the_table(tmp_path):
    """A job that calls every patient HGG: its MCC is 0 in every resample, so the table says
    "not estimable" instead of leaving the bounds blank as if none had been computed."""
    sweep = tmp_path / "constant"
    _job(sweep, "0", ["seed=0"], {"val": (PATIENTS, LABELS, [0.9] * 8)})
    _job(sweep, "1", ["seed=1"], {"val": (PATIENTS, LABELS, [0.9, 0.8, 0.3, 0.2, 0.7, 0.6, 0.1, 0.05])})
    table, _, _, _ = summarize_sweep(sweep, resamples=50)
    rows = {str(row["job"]): row for _, row in table.iterrows()}
    assert rows["0"]["val/patient_mcc_ci_note"].startswith("not estimable")
    assert pd.isna(rows["0"]["val/patient_mcc_ci_low"])
    assert pd.isna(rows["1"]["val/patient_mcc_ci_note"]) and not pd.isna(rows["1"]["val/patient_mcc_ci_low"])
    written = pd.read_csv(sweep / "sweep_summary.csv")
    assert written["val/patient_mcc_ci_note"].notna().sum() == 1


def _ablation_sweep(root: Path) -> Path:
    """A folder as experiment=ablation leaves it: 24 jobs of 16 validation and 24 test patients,
    each with a checkpoint and TensorBoard events that the summary must not open (the checkpoint
    is a named pipe: opening it would wait for ever)."""
    sweep = root / "ablation"
    rng = np.random.default_rng(0)
    arms = [(s, m, c, cr) for s in (0, 1, 2) for m in ("[flair,t1ce,t1,t2]", "[flair,t1ce]") for c in (0, 1)
            for cr in ("none", "tumor")]
    for number, (seed, modalities, context, crop) in enumerate(arms):
        overrides = [f"seed={seed}", f"data.modalities={modalities}", f"data.context={context}"]
        overrides.append(f"data.crop.mode={crop}")
        stages = {}
        for stage, n in (("val", 16), ("test", 24)):
            labels = [0, 1] * (n // 2)
            probs = np.clip(0.5 + (np.array(labels) - 0.5) * 0.4 + rng.normal(0, 0.25, n), 0.01, 0.99)
            stages[stage] = ([f"S{seed}_{stage}{i}" for i in range(n)], labels, probs.tolist())
        job = _job(sweep, str(number), overrides, stages, extra={"val/patient_auroc": float(rng.random())})
        (job / "checkpoints").mkdir()
        os.mkfifo(job / "checkpoints" / "epoch_004.ckpt")
        (job / "tensorboard").mkdir()
        (job / "tensorboard" / "events.out.tfevents.1.host").write_bytes(os.urandom(50_000))
    return sweep


@pytest.mark.slow  # a subprocess, as a user runs it
def test_a_24_job_sweep_is_summarized_in_under_5_s_of_cpu_without_opening_a_checkpoint(tmp_path):
    import resource

    sweep = _ablation_sweep(tmp_path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run_python("-m", "gliograde.summarize", str(sweep), timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr[-2000:]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 5, f"{cpu:.1f} s of CPU"  # 65 s for 5 tiny jobs before; imports included
    assert "Scoring 24 jobs" in result.stderr  # said before the long part
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert len(table) == 24 and table["test/patient_f1_ci_low"].notna().all()


def test_every_job_of_a_grid_has_its_own_place_in_each_panel_of_the_plot():
    from gliograde.sweeps.plot import axis_positions, dodge

    seeds = pd.Series([0, 1, 2] * 8)
    x, ticks, log = axis_positions(seeds)
    assert ticks == ["0", "1", "2"] and not log  # a few numbers are categories, not a number line
    spread = dodge(x, categorical=True)
    assert len(set(spread.round(9))) == 24  # 8 jobs share each seed, none hides another
    assert all(abs(s - v) < 0.5 for s, v in zip(spread, x))  # and they stay within their value
    many = pd.Series(np.linspace(0.001, 0.009, 9))
    assert axis_positions(many)[1] is None  # nine learning rates stay on a number line

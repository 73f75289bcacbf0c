"""evaluate.py and predict.py on a full or read-only place: one line, found before the inference
where it can be, no partial output folder; a read-only run is never written to; predict's
on_error=skip keeps the good patients of a folder with a damaged one."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from helpers.commands import run_python
from helpers.configs import compose_config
from helpers.disk import refuse_writes, tree
from helpers.runs import tiny_run

from gliograde.evaluation import progress as progress_module
from gliograde.evaluation.errors import EvaluationError
from gliograde.evaluation.runner import evaluate
from gliograde.inference.runner import predict
from gliograde.files.output_folder import OutputError

pytestmark = pytest.mark.slow  # each test evaluates or predicts with a trained model

MODALITIES = ("flair", "t1", "t1ce", "t2", "seg")


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    """The shared tiny run, and a private copy of it (no eval, TensorBoard or calibration yet)."""
    shared = tiny_run(tmp_path_factory)
    copy = tmp_path_factory.mktemp("diskfull") / "run"
    ignore = shutil.ignore_patterns("eval", "export", "tensorboard", "calibration.json")
    shutil.copytree(shared["run"], copy, ignore=ignore)
    return {**shared, "run": copy}


def _evaluate(run: Path, *overrides: str) -> dict:
    cfg = compose_config("evaluate", [f"run_dir={run}", "bootstrap=10", "gradcam_n=1", *overrides])
    return evaluate(cfg, [])


def _no_inference(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the inference started before the output place was checked")

    monkeypatch.setattr("gliograde.evaluation.runner.predict", refuse)
    monkeypatch.setattr("gliograde.inference.runner.load_patient", refuse)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------- evaluate
def test_evaluate_refuses_a_read_only_output_folder_before_the_inference(paths, monkeypatch):
    run = paths["run"]
    before = tree(run)
    refuse_writes(monkeypatch, run)
    _no_inference(monkeypatch)
    with pytest.raises(OutputError) as err:
        _evaluate(run)
    message = str(err.value)
    assert "\n" not in message and f"output_dir={run / 'eval' / 'test'}: cannot write in {run}" in message
    assert "Read-only file system" in message and "choose another output_dir" in message
    monkeypatch.undo()
    assert tree(run) == before


def test_evaluate_of_a_read_only_run_writes_only_to_output_dir(paths, monkeypatch, tmp_path, capsys):
    run, out = paths["run"], tmp_path / "out"
    before = tree(run)
    refused = refuse_writes(monkeypatch, run)
    report = _evaluate(run, f"output_dir={out}")
    stdout = capsys.readouterr().out
    assert f"Note: {run} cannot be written" in stdout and "not logged to its TensorBoard" in stdout
    assert f"Outputs: {out}" in stdout and report["n_patients"] == 4
    assert json.loads((out / "metrics.json").read_text())["n_patients"] == 4
    assert (out / "report.html").is_file() and list(out.glob("gradcam_*.png"))
    # nothing but the writability probes was even tried in the run
    assert all(Path(p).name.startswith(".write-test-") for p in refused), refused
    monkeypatch.undo()
    assert tree(run) == before


def test_evaluate_calibration_on_a_read_only_run_is_refused_at_once(paths, monkeypatch, tmp_path):
    run, out = paths["run"], tmp_path / "out"
    refuse_writes(monkeypatch, run)
    _no_inference(monkeypatch)
    with pytest.raises(EvaluationError) as err:
        _evaluate(run, f"output_dir={out}", "calibration=temperature")
    message = str(err.value)
    assert "\n" not in message and str(run / "calibration.json") in message and "calibration=none" in message
    assert not out.exists()


def test_evaluate_on_a_disk_that_fills_up_keeps_the_earlier_report(paths, monkeypatch, tmp_path, capsys):
    run, out = paths["run"], tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("earlier")
    from gliograde.evaluation import runner

    real = runner.predict

    def predict_then_fill(*args, **kwargs):
        predictions = real(*args, **kwargs)
        refuse_writes(monkeypatch, tmp_path, errno.ENOSPC)  # the disk is full once the inference is done
        return predictions

    monkeypatch.setattr(runner, "predict", predict_then_fill)
    with pytest.raises(OutputError) as err:
        _evaluate(run, f"output_dir={out}")
    message = str(err.value)
    assert "\n" not in message and f"output_dir={out}: cannot be written (No space left on device)" in message
    monkeypatch.undo()
    assert os.listdir(out) == ["metrics.json"] and (out / "metrics.json").read_text() == "earlier"
    assert _hidden(tmp_path) == []

    # with space, the same command replaces it whole, logs to the run's TensorBoard and, off a
    # terminal, says how far the inference is in plain lines
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    capsys.readouterr()
    _evaluate(run, f"output_dir={out}")
    err_text = capsys.readouterr().err
    assert "evaluate: inference (test) " in err_text and " slices" in err_text and "\r" not in err_text
    assert json.loads((out / "metrics.json").read_text())["split"] == "test"
    assert list((run / "tensorboard").glob("events.out.tfevents.*")) and _hidden(tmp_path) == []


def test_evaluate_calibration_on_a_full_disk_is_one_line_and_stores_nothing(paths, monkeypatch, tmp_path):
    run, out = paths["run"], tmp_path / "out"
    from gliograde.evaluation import calibration

    real = calibration.write_calibration

    def fill_then_write(*args, **kwargs):
        refuse_writes(monkeypatch, run, errno.ENOSPC)
        return real(*args, **kwargs)

    monkeypatch.setattr(calibration, "write_calibration", fill_then_write)
    with pytest.raises(OutputError) as err:
        _evaluate(run, f"output_dir={out}", "calibration=temperature", "gradcam_n=0")
    message = str(err.value)
    assert "\n" not in message and f"{run / 'calibration.json'}: cannot be written (No space left" in message
    monkeypatch.undo()
    assert not (run / "calibration.json").exists() and not list(run.glob(".calibration.json*"))
    assert not out.exists() and _hidden(tmp_path) == []


# -------------------------------------------------------------------------- predict
def _test_patients(run: Path) -> list[str]:
    lines = (run / "splits.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    return sorted(r["patient_id"] for r in rows if r["split"] == "test")


def _folder_with_damage(paths: dict[str, Path], root: Path, missing_t2: bool) -> tuple[list[str], Path]:
    """Two good patients, then one with a truncated FLAIR (and one without T2); returns the good
    ids and the truncated file."""
    good = _test_patients(paths["run"])[:2]
    for patient in good:
        shutil.copytree(paths["cohort"] / patient, root / patient)
    damaged = root / "zz_damaged"
    damaged.mkdir()
    source = _test_patients(paths["run"])[2]
    for suffix in MODALITIES:
        shutil.copy(paths["cohort"] / source / f"{source}_{suffix}.nii", damaged / f"zz_damaged_{suffix}.nii")
    flair = damaged / "zz_damaged_flair.nii"
    flair.write_bytes(flair.read_bytes()[: flair.stat().st_size // 2])
    if missing_t2:
        shutil.copytree(root / good[0], root / "zz_no_t2")
        for path in (root / "zz_no_t2").iterdir():
            path.rename(path.with_name(path.name.replace(good[0], "zz_no_t2")))
        (root / "zz_no_t2" / "zz_no_t2_t2.nii").unlink()
    return good, flair


def test_predict_skips_damaged_patients_and_keeps_the_others(paths, tmp_path, caplog):
    root, out = tmp_path / "patients", tmp_path / "out"
    good, flair = _folder_with_damage(paths, root, missing_t2=True)
    overrides = [f"ckpt={paths['run']}", f"input={root}", f"output_dir={out}", "on_error=skip"]
    overrides.append("gradcam=false")
    report = predict(compose_config("predict", overrides))
    assert [row["patient_id"] for row in report["patients"]] == good
    skipped = {row["patient_id"]: row for row in report["skipped"]}
    assert set(skipped) == {"zz_damaged", "zz_no_t2"} and skipped["zz_damaged"]["file"] == str(flair)
    table = (out / "skipped.csv").read_text().splitlines()
    assert table[0] == "patient_id,file,problem" and len(table) == 3
    assert json.loads((out / "predictions.json").read_text())["skipped"] == report["skipped"]
    assert len((out / "predictions.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{p}_slices.png" for p in good)
    assert "zz_no_t2" in (out / "report.html").read_text()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped")]
    assert len(lines) == 2 and any("patient zz_damaged" in line and str(flair) in line for line in lines)


def test_predict_stops_at_a_damaged_patient_by_default_and_leaves_no_folder(paths, tmp_path):
    root, out = tmp_path / "patients", tmp_path / "outputs" / "p"
    _, flair = _folder_with_damage(paths, root, missing_t2=False)
    result = run_python("predict.py", f"ckpt={paths['run']}", f"input={root}", f"output_dir={out}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: patient zz_damaged: ") and str(flair) in line
    assert not (tmp_path / "outputs").exists()  # not even the folder made for it


def test_predict_on_a_read_only_or_filling_place_leaves_nothing(paths, monkeypatch, tmp_path):
    patient = _test_patients(paths["run"])[0]
    root = tmp_path / "patients"
    for name in _test_patients(paths["run"])[:2]:
        shutil.copytree(paths["cohort"] / name, root / name)
    place = tmp_path / "place"
    place.mkdir()
    overrides = [f"ckpt={paths['run']}", f"input={root}", f"output_dir={place / 'out'}", "gradcam=false"]

    with monkeypatch.context() as patch:
        refuse_writes(patch, place)
        _no_inference(patch)
        with pytest.raises(OutputError, match=r"output_dir=.*place/out: cannot write there \(Read-only"):
            predict(compose_config("predict", overrides))
    assert os.listdir(place) == []

    from gliograde.inference import runner

    real, calls = runner.load_patient, []

    def fill_after_first(*args, **kwargs):
        calls.append(args[0].patient_id)
        if len(calls) == 2:  # the first patient's figure is written, then the disk is full
            refuse_writes(monkeypatch, place, errno.ENOSPC)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "load_patient", fill_after_first)
    with pytest.raises(OutputError, match=r"output_dir=.*place/out: cannot be written \(No space left on"):
        predict(compose_config("predict", overrides))
    monkeypatch.undo()
    assert calls[0] == patient and os.listdir(place) == []

"""``python -m gliograde.ingest`` and ``predict.py ingest=true`` end to end: hospital-like scans
(DICOM and NIfTI, skull, head pose) of a trained run's patients, ingested into the run's space,
graded, and refused or flagged where they cannot be trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from filelock import FileLock

from helpers.commands import run_python
from helpers.runs import tiny_train_args

from gliograde.config.compose import expand_switches
from gliograde.data.synthetic.generator import generate_cohort
from gliograde.errors import ConfigError

SHAPE = (64, 64, 40)


# ------------------------------------------------------------------ fast: options


def test_ingest_switch_is_short_for_enabled():
    argv = ["predict.py", "ingest=true", "ingest.reference=t1", "input=x", "ingest=False"]
    assert expand_switches(argv, {"ingest": "ingest.enabled"}) == [
        "predict.py",
        "ingest.enabled=true",
        "ingest.reference=t1",
        "input=x",
        "ingest.enabled=false",
    ]


def test_settings_refuse_unknown_keys_and_values_in_one_line():
    from gliograde.ingest.settings import read_settings

    for node, key in (
        ({"qc": {"min_ncc": 0.5}}, "ingest.qc.min_ncc"),
        ({"reference": "dwi"}, "ingest.reference=dwi"),
        ({"bogus": 1}, "ingest.bogus"),
        ({"series": {"flair": "*FLAIR*"}}, "ingest.series.flair"),
    ):
        with pytest.raises(ConfigError) as err:
            read_settings(node)
        assert key in str(err.value) and "\n" not in str(err.value)
    settings = read_settings({"series": {"flair": ["*DARKFLUID*"]}}, {"t2": "*t2w*", "flair": None})
    assert settings.files == {"t2": "*t2w*"}


def test_command_needs_two_folders_and_a_model(tmp_path):
    from gliograde.ingest.command import compose, run

    with pytest.raises(ConfigError, match="give SRC and OUT"):
        compose([str(tmp_path)])
    with pytest.raises(ConfigError, match="model= is required"):
        run(compose([str(tmp_path), str(tmp_path / "out")]))
    with pytest.raises(ConfigError, match="ingest.nonsense"):
        compose([str(tmp_path), str(tmp_path / "out"), "ingest.nonsense=1"])


# ------------------------------------------------------------------ slow: end to end


@pytest.fixture(scope="session")
def ingest_run(tmp_path_factory) -> dict[str, Path]:
    """A one-epoch classifier on 12 patients of 64x64x40 (the model's space), hospital-like scans
    of 2 of its patients (one as DICOM series, one as RAS NIfTI with hospital names), and those
    scans ingested once (``ingested``)."""
    base = tmp_path_factory.getbasetemp() / "ingest_run"
    base.mkdir(exist_ok=True)
    paths = {
        "cohort": base / "cohort",
        "cache": base / "cache",
        "run": base / "run",
        "scans": base / "scans",
        "ingested": base / "ingested",
    }
    with FileLock(str(base / ".lock")):
        if not (paths["run"] / "metrics.json").is_file():
            generate_cohort(paths["cohort"], patients=12, seed=11, shape=SHAPE, lgg_fraction=0.5, compress=False)
            result = run_python(*tiny_train_args(paths, f"hydra.run.dir={paths['run']}"))
            assert result.returncode == 0, result.stderr[-3000:]
        if not (paths["scans"] / "truth.csv").is_file():
            shutil.rmtree(paths["scans"], ignore_errors=True)
            picked = base / "picked"
            shutil.rmtree(picked, ignore_errors=True)
            picked.mkdir()
            for folder in sorted(p for p in paths["cohort"].iterdir() if p.is_dir())[:2]:
                shutil.copytree(folder, picked / folder.name)
            result = run_python(
                "-m", "gliograde.ingest.hospital_cohort", str(picked), str(paths["scans"]), "--seed", "3"
            )
            assert result.returncode == 0, result.stderr[-3000:]
        if not (paths["ingested"] / "ingest.csv").is_file():
            result = _ingest(paths, paths["scans"], paths["ingested"])
            assert result.returncode == 0, result.stderr[-3000:]
            paths["ingest_stdout"] = result.stdout  # type: ignore[assignment]
    return paths


# 64x64x40 heads: 5 mm FLAIR and 4 mm T2 slices leave too little of them for the default agreement
# threshold, calibrated at full size (see the README's table).
SMALL_HEADS = ("ingest.qc.min_agreement=0.05",)


def _ingest(paths: dict[str, Path], src: Path, out: Path, *extra: str):
    return run_python("-m", "gliograde.ingest", str(src), str(out), f"model={paths['run']}", *SMALL_HEADS, *extra)


def _one_patient(scans: Path, kind: str, into: Path) -> Path:
    """A source folder holding one patient of ``scans`` written as ``kind`` (dicom or nifti)."""
    truth = pd.read_csv(scans / "truth.csv")
    patient = truth[truth["written_as"] == kind]["patient_id"].iloc[0]
    shutil.copytree(scans / patient, into / patient)
    return into


@pytest.mark.slow
def test_hospital_scans_come_out_in_the_models_space(ingest_run):
    out = ingest_run["ingested"]
    summary = pd.read_csv(out / "ingest.csv")
    assert sorted(summary["source"]) == ["dicom", "nifti"]
    assert (summary["qc"] == "passed").all(), summary["qc"].tolist()
    assert (ingest_run["run"] / "template" / "template.json").is_file()  # built once, kept in the run
    for patient in summary["patient_id"]:
        original = ingest_run["cohort"] / patient
        folder = out / patient
        for modality in ("flair", "t1", "t1ce", "t2"):
            mine = nib.load(folder / f"{patient}_{modality}.nii.gz")
            theirs = nib.load(original / f"{patient}_{modality}.nii")
            assert mine.shape == theirs.shape
            np.testing.assert_allclose(mine.affine, theirs.affine, atol=1e-4)
            brain = np.asarray(theirs.dataobj) > 0
            found = np.asarray(mine.dataobj) > 0
            # The brain, skull-stripped. These heads are small (a brain 30 mm high) and their FLAIR and
            # T2 slices 5 and 4 mm thick: the caps those slices mixed with CSF and skull are left out.
            within, kept = (brain & found).sum() / found.sum(), (brain & found).sum() / brain.sum()
            assert within > 0.9 and kept > 0.6, (patient, modality, within, kept)
        record = json.loads((folder / "ingest.json").read_text())
        assert record["qc"]["passed"] and record["reference"] == "t1ce"
        # the thick slices' partial volume at the brain's surface is left out, and said in mL
        assert 0 < record["qc"]["partial_volume_ml"] < record["qc"]["brain_ml"], record["qc"]
        assert set(record["series"]) == {"flair", "t1", "t1ce", "t2"}
        assert record["libraries"]["SimpleITK"] != "not installed"
        for transform in record["transforms"].values():
            sitk.ReadTransform(str(folder / transform))  # as ITK reads it
        assert (folder / "registration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dicom = summary[summary["source"] == "dicom"]["patient_id"].iloc[0]
    notes = json.loads((out / dicom / "ingest.json").read_text())["notes"]
    assert any("LOCALIZER" in note for note in notes), notes  # the scout was left out, and said


@pytest.mark.slow
def test_predict_grades_ingested_scans_the_same_either_way(ingest_run, tmp_path):
    graded = run_python(
        "predict.py",
        f"ckpt={ingest_run['run']}",
        f"input={ingest_run['ingested']}",
        "mask_free=brain",
        f"output_dir={tmp_path / 'p1'}",
    )
    assert graded.returncode == 0, graded.stderr[-3000:]
    on_the_fly = run_python(
        "predict.py",
        f"ckpt={ingest_run['run']}",
        f"input={ingest_run['scans']}",
        "ingest=true",
        *SMALL_HEADS,
        "mask_free=brain",
        f"output_dir={tmp_path / 'p2'}",
    )
    assert on_the_fly.returncode == 0, on_the_fly.stderr[-3000:]
    first = pd.read_csv(tmp_path / "p1" / "predictions.csv").set_index("patient_id")
    second = pd.read_csv(tmp_path / "p2" / "predictions.csv").set_index("patient_id")
    assert (first["qc"] == "passed").all() and (second["qc"] == "passed").all()
    pd.testing.assert_series_equal(first["prob_HGG"], second["prob_HGG"].loc[first.index], atol=1e-6)
    assert (tmp_path / "p2" / "ingested" / "ingest.csv").is_file()  # kept beside the report
    page = (tmp_path / "p2" / "report.html").read_text()
    assert page.count("_registration</figcaption>") == 2


@pytest.mark.slow
def test_a_failed_quality_check_is_flagged_and_not_graded_unless_warned(ingest_run, tmp_path):
    src = _one_patient(ingest_run["scans"], "nifti", tmp_path / "src")
    out = tmp_path / "ingested"
    done = _ingest(ingest_run, src, out, "ingest.qc.min_template_ncc=0.999")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 of 1 passed the quality check" in done.stdout
    patient = next(p.name for p in src.iterdir())
    qc = pd.read_csv(out / "ingest.csv").set_index("patient_id").loc[patient, "qc"]
    assert "template_ncc" in qc and "< 1.00" in qc
    excluded = run_python(
        "predict.py", f"ckpt={ingest_run['run']}", f"input={out}", "mask_free=brain", f"output_dir={tmp_path / 'p'}"
    )
    assert excluded.returncode == 0, excluded.stderr[-3000:]
    table = pd.read_csv(tmp_path / "p" / "predictions.csv").set_index("patient_id")
    assert table.loc[patient, "prediction"] == "quality check failed" and np.isnan(table.loc[patient, "prob_HGG"])
    assert f"{patient}: not graded: quality check failed" in excluded.stdout
    assert (tmp_path / "p" / f"{patient}_registration.png").is_file()  # what to look at, beside the report
    warned = run_python(
        "predict.py",
        f"ckpt={ingest_run['run']}",
        f"input={out}",
        "mask_free=brain",
        "qc=warn",
        f"output_dir={tmp_path / 'w'}",
    )
    assert warned.returncode == 0, warned.stderr[-3000:]
    table = pd.read_csv(tmp_path / "w" / "predictions.csv").set_index("patient_id")
    assert not np.isnan(table.loc[patient, "prob_HGG"]) and "template_ncc" in table.loc[patient, "qc"]


@pytest.mark.slow
def test_a_patient_ingested_for_another_template_is_flagged(ingest_run, tmp_path):
    from gliograde.ingest.template import build_template, save_template

    cohort = sorted(p for p in ingest_run["cohort"].iterdir() if p.is_dir())[-3:]
    patients = [{m: next(folder.glob(f"*_{m}.nii*")) for m in ("flair", "t1", "t1ce", "t2")} for folder in cohort]
    save_template(build_template(patients, ("flair", "t1", "t1ce", "t2")), tmp_path / "other")
    args = ("predict.py", f"ckpt={ingest_run['run']}", f"input={ingest_run['ingested']}", "mask_free=brain")
    flagged = run_python(*args, f"ingest.template={tmp_path / 'other'}", f"output_dir={tmp_path / 'p'}")
    assert flagged.returncode == 0, flagged.stderr[-3000:]
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert (table["prediction"] == "quality check failed").all(), table.to_string()
    assert table["qc"].str.contains("template: ingested into .*not this model's template", regex=True).all()
    own = run_python(*args, f"output_dir={tmp_path / 'own'}")  # the template it was ingested for
    assert own.returncode == 0, own.stderr[-3000:]
    assert (pd.read_csv(tmp_path / "own" / "predictions.csv")["qc"] == "passed").all()


@pytest.mark.slow
def test_bad_places_and_damaged_records_are_one_line(ingest_run, tmp_path):
    inside = _ingest(ingest_run, ingest_run["scans"], ingest_run["scans"] / "out")
    assert inside.returncode == 2 and "\n" not in inside.stderr.strip(), inside.stderr
    busy = tmp_path / "busy"
    (busy / "keep").mkdir(parents=True)
    refused = _ingest(ingest_run, ingest_run["scans"], busy)
    assert refused.returncode == 2 and "keep" in refused.stderr
    assert (busy / "keep").is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = _ingest(ingest_run, empty, tmp_path / "o")
    assert nothing.returncode == 2 and not (tmp_path / "o").exists()

    out = tmp_path / "ingested"
    shutil.copytree(ingest_run["ingested"], out)
    record = next(out.glob("*/ingest.json"))
    record.write_text(record.read_text()[:40])
    damaged = run_python(
        "predict.py", f"ckpt={ingest_run['run']}", f"input={out}", "mask_free=brain", f"output_dir={tmp_path / 'p'}"
    )
    assert damaged.returncode == 2 and "ingest.json" in damaged.stderr and "Traceback" not in damaged.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_an_export_carries_the_template_sealed(ingest_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ingest_run["run"], run, ignore=shutil.ignore_patterns("export", "tensorboard"))
    exported = run_python("-m", "gliograde.export", str(run))
    assert exported.returncode == 0, exported.stderr[-3000:]
    card = json.loads((run / "export" / "model_card.json").read_text())
    assert card["template"]["folder"] == "template"
    src = _one_patient(ingest_run["scans"], "dicom", tmp_path / "src")
    done = run_python("-m", "gliograde.ingest", str(src), str(tmp_path / "o1"), f"model={run / 'export'}", *SMALL_HEADS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Template: {run / 'export' / 'template'}" in done.stdout
    record = run / "export" / "template" / "template.json"
    record.write_text(record.read_text().replace('"', "'", 1))
    tampered = run_python("-m", "gliograde.ingest", str(src), str(tmp_path / "o2"), f"model={run / 'export'}")
    assert tampered.returncode == 2 and "re-export" in tampered.stderr
    assert not (tmp_path / "o2").exists()


def test_a_volume_changed_after_ingestion_is_refused_in_one_line(tmp_path):
    from gliograde.data.errors import DataError
    from gliograde.ingest.provenance import read_record, write_record

    folder = tmp_path / "P1"
    folder.mkdir()
    (folder / "P1_flair.nii.gz").write_bytes(b"ingested voxels")
    from gliograde.inference.calibration import file_sha256

    write_record(
        folder,
        {
            "qc": {"passed": True, "failed": []},
            "volumes": {"flair": "P1_flair.nii.gz"},
            "volume_sha256": {"flair": file_sha256(folder / "P1_flair.nii.gz")},
        },
    )
    assert read_record(folder, "P1")["qc"]["passed"]
    (folder / "P1_flair.nii.gz").write_bytes(b"another patient's voxels")  # copied in afterwards
    with pytest.raises(DataError) as err:
        read_record(folder, "P1")
    assert "flair volume changed" in str(err.value) and "\n" not in str(err.value)
    (folder / "P1_flair.nii.gz").unlink()
    with pytest.raises(DataError, match="changed or missing"):
        read_record(folder, "P1")

"""Patients without a tumour mask: refused where the model needs one, graded by a mask-free rule
only when asked (mask_free=brain), each patient's rule recorded; masks=hidden; tumor_weighted."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.cohorts import make_datamodule, patient_file
from helpers.commands import run_python
from helpers.configs import compose_config
from omegaconf import OmegaConf

from gliograde.data.errors import DataError
from gliograde.data.pipeline.prepared import Tumour
from gliograde.data.batches.slices import select_slices
from gliograde.data.discovery.specs import SliceSpec
from gliograde.errors import ConfigError, GliogradeError
from gliograde.evaluation.report import report_dir
from gliograde.contract.mask_free import MissingMaskError, mask_free_note, refuse_missing_masks
from gliograde.config.schema import validate_config

TUMOUR_SLICES = {"slices": {"strategy": "tumor_topk", "k": 4}, "crop": {"mode": "none", "size": 128}}
TUMOUR_CROP = {"slices": {"strategy": "brain"}, "crop": {"mode": "tumor", "size": 16}}
BRAIN = {"slices": {"strategy": "brain"}, "crop": {"mode": "none", "size": 128}}
NOTE = "1 patient(s) graded by the brain rule without a tumour mask: the model was trained on tumour slices"


def test_mask_free_and_masks_options_are_checked_in_one_line():
    for bad, key in (("mask_free=tumor_topk", "mask_free"), ("masks=shown", "masks")):
        with pytest.raises(ConfigError, match=key) as err:
            validate_config(compose_config("evaluate", ["run_dir=R", bad]), "evaluate")
        assert "\n" not in str(err.value)
    cfg = compose_config("evaluate", ["run_dir=R", "mask_free=brain", "masks=hidden"])
    validate_config(cfg, "evaluate")
    assert cfg.mask_free == "brain" and compose_config("evaluate", ["run_dir=R"]).mask_free is None
    assert compose_config("predict", []).mask_free is None
    expected = r"mask_free='tumor_all' must be null .* \['brain', 'middle', 'range'\]"
    with pytest.raises(ConfigError, match=expected):
        from gliograde.contract.mask_free import check_mask_free

        check_mask_free("tumor_all")


@pytest.mark.parametrize("contract, part", [(TUMOUR_SLICES, "tumour slices"), (TUMOUR_CROP, "crop centred")])
def test_a_missing_mask_is_refused_naming_the_patient_and_both_ways_out(contract, part):
    with pytest.raises(MissingMaskError) as err:
        refuse_missing_masks(["P1", "P7", "P9"], contract, None)
    line = str(err.value)
    assert isinstance(err.value, GliogradeError) and "\n" not in line
    assert line.startswith("patient P1 (and 2 more) has no tumour mask") and part in line
    assert "segmenter=RUN" in line and "task=segment" in line and "mask_free=brain" in line
    refuse_missing_masks(["P1"], contract, "brain")  # asked for knowingly
    refuse_missing_masks(["P1"], BRAIN, None)  # the model needs no mask
    refuse_missing_masks([], contract, None)


@pytest.mark.parametrize("mask_free", [None, "brain"])
def test_tumor_weighted_without_masks_is_refused_even_with_a_mask_free_rule(mask_free):
    with pytest.raises(MissingMaskError, match="aggregate=tumor_weighted .* patient P1 has no tumour") as err:
        refuse_missing_masks(["P1"], BRAIN, mask_free, "tumor_weighted")
    assert "segmenter=RUN" in str(err.value)
    if mask_free:
        assert "mask_free=brain does not help: equal weights would give the mean" in str(err.value)


def test_the_note_counts_the_patients_graded_without_a_mask():
    rules = {"A": "mask", "B": "brain", "C": "brain", "D": "predicted mask"}
    assert mask_free_note(rules, TUMOUR_SLICES) == (
        "2 patient(s) graded by the brain rule without a tumour mask: the model was trained on tumour slices"
    )
    assert "crops centred on the tumour" in mask_free_note({"A": "brain"}, TUMOUR_CROP)
    assert mask_free_note({"A": "mask"}, TUMOUR_SLICES) is None
    assert mask_free_note({"A": "brain"}, BRAIN) is None


def test_report_folder_names_the_hidden_masks_and_the_mask_free_rule(tmp_path):
    base = {"split": "test", "ckpt": "best", "threshold": 0.5, "aggregate": "mean", "tta": "none",
            "calibration": "none", "output_dir": None}
    hidden = OmegaConf.create({**base, "masks": "hidden", "mask_free": "brain"})
    assert report_dir(hidden, tmp_path, []) == tmp_path / "eval" / "test_masks-hidden_brain"
    plain = OmegaConf.create({**base, "masks": "use", "mask_free": None})
    assert report_dir(plain, tmp_path, []) == tmp_path / "eval" / "test"


def _without_mask(root, pid: str) -> None:
    patient_file(root, pid, "seg").unlink()


def test_each_patient_keeps_its_own_rule_where_only_some_lack_a_mask(tiny_cohort, tmp_path):
    pid = "BraTS20_Training_004"
    _without_mask(tiny_cohort, pid)
    refused = make_datamodule(tiny_cohort, tmp_path / "cache", split=None)
    with pytest.raises(DataError, match=f"{pid}.*no tumour mask"):
        refused.setup()  # as in training: nothing chosen behind the user's back
    dm = make_datamodule(tiny_cohort, tmp_path / "cache", split=None)
    dm.prepared.mask_free = "brain"
    dm.setup()
    rules = dm.slice_rules
    assert rules[pid] == "brain" and {r for p, r in rules.items() if p != pid} == {"mask"}
    mine = next(p for p in dm.patients if p.patient_id == pid)
    brain = dm.cached.brain_area_of(dm.modalities, "axial")[mine.position]
    expected = select_slices(pid, brain, None, SliceSpec(strategy="brain"))
    assert np.array_equal(mine.slices, expected) and len(mine.slices) > 4
    other = next(p for p in dm.patients if p.patient_id != pid)
    assert len(other.slices) == 4  # tumour top-4, by its mask


def test_hidden_masks_build_their_own_cache_and_a_tumour_can_be_supplied(tiny_cohort, tmp_path):
    masked = make_datamodule(tiny_cohort, tmp_path / "cache", split=None)
    masked.setup()
    hidden = make_datamodule(tiny_cohort, tmp_path / "cache", split=None)
    hidden.prepared.hide_masks = True
    hidden.prepared.mask_free = "brain"
    hidden.setup()
    assert hidden.cached.directory != masked.cached.directory  # another cache key: no mask leaks in
    assert not hidden.cached.has_mask.any() and not hidden.cached.tumour_area["axial"].any()
    assert set(hidden.slice_rules.values()) == {"brain"}
    # the seam for predicted masks: a tumour given between load and select is used as a mask's
    supplied = make_datamodule(tiny_cohort, tmp_path / "cache", split=None)
    supplied.prepared.hide_masks = True
    supplied.prepared.tumours_to_come = True
    supplied.prepare_data()
    cached = masked.cached
    supplied.prepared.apply_tumours(
        {
            pid: Tumour(
                areas={p: cached.tumour_area[p][i] for p in cached.tumour_area},
                boxes={p: cached.tumour_boxes[p][i] for p in cached.tumour_boxes},
            )
            for i, pid in enumerate(cached.patient_ids)
        }
    )
    supplied.setup()
    assert set(supplied.slice_rules.values()) == {"predicted mask"}
    chosen = {p.patient_id: p.slices.tolist() for p in masked.patients}
    assert {p.patient_id: p.slices.tolist() for p in supplied.patients} == chosen


# ------------------------------------------------------------- evaluate, end to end
@pytest.fixture(scope="module")
def run_copy(tmp_path_factory):
    """The shared tiny run (tumour top-4 slices), copied so that its eval folders are this module's."""
    from helpers.runs import tiny_run

    shared = tiny_run(tmp_path_factory)
    copy = tmp_path_factory.mktemp("maskfree") / "run"
    ignore = shutil.ignore_patterns("eval", "export", "tensorboard", "calibration.json", "recipe.json")
    shutil.copytree(shared["run"], copy, ignore=ignore)
    with open(copy / "splits.csv", newline="") as fh:
        test = sorted(r["patient_id"] for r in csv.DictReader(fh) if r["split"] == "test")
    return {**shared, "run": copy, "test": test}


def _test_cohort(run_copy, folder: Path, without: int) -> Path:
    """The run's test patients in a cohort of their own, the first ``without`` of them with no mask."""
    for pid in run_copy["test"]:
        shutil.copytree(run_copy["cohort"] / pid, folder / pid)
    shutil.copy(run_copy["cohort"] / "name_mapping.csv", folder / "name_mapping.csv")
    for pid in run_copy["test"][:without]:
        _without_mask(folder, pid)
    return folder


def _evaluate_in_process(run: Path, *overrides: str) -> dict:
    from gliograde.evaluation.runner import data_overrides, evaluate

    cfg = compose_config("evaluate", [f"run_dir={run}", "bootstrap=10", "gradcam_n=0", *overrides])
    return evaluate(cfg, data_overrides(list(overrides)))


@pytest.mark.slow
def test_evaluate_refuses_a_cohort_without_masks_before_its_cache(run_copy, tmp_path):
    cohort = _test_cohort(run_copy, tmp_path / "cohort", without=4)
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = run_python(
        "evaluate.py", f"run_dir={run_copy['run']}", f"data.root={cohort}", f"data.cache_dir={cache}",
        "split=all", f"output_dir={out}",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    first = run_copy["test"][0]
    assert line.startswith(f"error: patient {first} (and 3 more) has no tumour mask")
    assert "segmenter=RUN" in line and "mask_free=brain" in line
    assert not out.exists() and not cache.exists()  # refused from the file names alone


@pytest.mark.slow
def test_evaluate_grades_by_the_brain_rule_only_when_asked_and_says_so(run_copy, tmp_path, capsys):
    cohort = _test_cohort(run_copy, tmp_path / "cohort", without=1)
    first = run_copy["test"][0]
    data = [f"data.root={cohort}", f"data.cache_dir={tmp_path / 'cache'}", "split=all"]
    refusal = f"^patient {first} has no tumour mask.*segmenter=RUN.*mask_free=brain"
    with pytest.raises(MissingMaskError, match=refusal):
        _evaluate_in_process(run_copy["run"], *data, f"output_dir={tmp_path / 'refused'}")
    assert not (tmp_path / "refused").exists()
    with pytest.raises(MissingMaskError, match="tumor_weighted.*mask_free=brain does not help"):
        _evaluate_in_process(run_copy["run"], *data, "aggregate=tumor_weighted", "mask_free=brain")

    out = tmp_path / "out"
    report = _evaluate_in_process(run_copy["run"], *data, f"output_dir={out}", "mask_free=brain")
    with open(out / "patient_predictions.csv", newline="") as fh:
        rows = {r["patient_id"]: r for r in csv.DictReader(fh)}
    assert {p: r["slice_rule"] for p, r in rows.items()} == {p: "mask" for p in rows} | {first: "brain"}
    others = {int(r["n_slices"]) for p, r in rows.items() if p != first}
    assert int(rows[first]["n_slices"]) > 4 and others == {4}
    note = NOTE
    assert report["mask_free_note"] == note and report["slice_rules"][first] == "brain"
    assert json.loads((out / "metrics.json").read_text())["mask_free_note"] == note
    assert note in (out / "report.html").read_text() and note in capsys.readouterr().out


@pytest.mark.slow
def test_hidden_masks_measure_the_cost_of_not_having_them(run_copy, capsys):
    from gliograde.compare import main as compare

    run = run_copy["run"]
    with pytest.raises(MissingMaskError, match=r"and 15 more\) has no tumour mask \(masks=hidden\)"):
        _evaluate_in_process(run, "masks=hidden")
    hidden = _evaluate_in_process(run, "masks=hidden", "mask_free=brain")
    masked = _evaluate_in_process(run)
    out = run / "eval" / "test_masks-hidden_brain"
    with open(out / "patient_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["patient_id"] for r in rows) == run_copy["test"]
    assert {r["slice_rule"] for r in rows} == {"brain"} and hidden["masks"] == "hidden"
    assert set(masked["slice_rules"].values()) == {"mask"}
    capsys.readouterr()
    assert compare([str(run / "eval" / "test"), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "auroc" in printed and "DeLong" in printed and "McNemar" in printed


def test_predict_stream_takes_a_supplied_tumour_or_the_mask_free_rule(tiny_cohort, monkeypatch):
    from gliograde.contract.input_contract import from_config
    from gliograde.inference import stream
    from gliograde.inference.inputs import PatientFiles

    data = OmegaConf.to_container(compose_config("train", ["data=brats2020", "data.slices.k=4"]).data)
    contract = from_config({**data, "root": str(tiny_cohort)})
    pid = "BraTS20_Training_004"
    modalities = {m: patient_file(tiny_cohort, pid, m) for m in ("flair", "t1", "t1ce", "t2")}
    seen = []
    real = stream.preprocess_patient
    monkeypatch.setattr(stream, "preprocess_patient", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    seg = patient_file(tiny_cohort, pid, "seg")
    masked = stream.load_patient(PatientFiles(pid, modalities, seg), contract, False)
    assert masked.slice_rule == "mask" and len(masked.slice_index) == 4
    truth = seen[-1]
    bare = PatientFiles(pid, modalities, None)
    calls = []

    def source(patient, volume, areas):
        calls.append((patient, volume.shape, areas.tumour))
        return truth.tumour, truth.tumour_boxes

    supplied = stream.load_patient(bare, contract, False, tumour_source=source)
    assert calls and calls[0][0] == pid and calls[0][2] is None  # after preprocessing, without a mask
    assert supplied.slice_rule == "predicted mask"
    assert np.array_equal(supplied.slice_index, masked.slice_index)
    assert np.array_equal(supplied.images, masked.images)
    brain = stream.load_patient(bare, contract, False, mask_free="brain")
    assert brain.slice_rule == "brain" and len(brain.slice_index) > 4
    with pytest.raises(DataError, match="no tumour mask"):
        stream.load_patient(bare, contract, False)


def test_evaluate_judges_by_the_slices_it_selects(tmp_path):
    from gliograde.evaluation.inputs import refuse_missing_masks as refuse_at_evaluate

    root = tmp_path / "cohort"
    (root / "BraTS20_Training_001").mkdir(parents=True)
    for m in ("flair", "t1", "t1ce", "t2"):
        (root / "BraTS20_Training_001" / f"BraTS20_Training_001_{m}.nii").write_bytes(b"")
    data = compose_config("train", ["data=brats2020", f"data.root={root}"]).data
    cfg = OmegaConf.create({"aggregate": "mean", "mask_free": None, "masks": "use"})
    with pytest.raises(MissingMaskError, match="patient BraTS20_Training_001 has no tumour mask"):
        refuse_at_evaluate(cfg, data, TUMOUR_SLICES)
    data.slices.strategy = "brain"  # data.slices.strategy=brain on the command line: chosen knowingly
    assert refuse_at_evaluate(cfg, data, TUMOUR_SLICES) == ["BraTS20_Training_001"]

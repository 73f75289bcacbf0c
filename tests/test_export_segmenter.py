"""python -m gliograde.export RUN segmenter=SEG: both graphs and one sealed card naming both
contracts and the segmenter's Dice; the bundled ONNX segmenter gives the checkpoint's masks;
every misfit segmenter, and a tampered bundle, is refused in one line."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.commands import run_python
from helpers.runs import tiny_segmenter_run

from gliograde import export as export_module
from gliograde.inference.models import find_checkpoint, read_card
from gliograde.segmentation.datamodule import SegmentationDataModule
from gliograde.segmentation.inference import Segmenter, open_segmenter
from gliograde.segmentation.volume import SegmenterError
from gliograde.segmentation.onnx_segmenter import OnnxSegmenter, bundled_segmenter

# trains a classifier and a segmenter in `python train.py` subprocesses
pytestmark = pytest.mark.slow



def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny classifier run exported with a tiny segmenter trained on the same cohort."""
    paths = tiny_segmenter_run(tmp_path_factory)  # shared with the other segmenter tests
    base = tmp_path_factory.mktemp("bundle")
    run = base / "run"
    shutil.copytree(
        paths["run"], run, ignore=shutil.ignore_patterns("eval", "export", "tensorboard", "last.ckpt")
    )
    seg = {"cohort": paths["cohort"], "cache": paths["cache"], "run": paths["segmenter"]}
    result = run_python("-m", "gliograde.export", str(run), f"segmenter={seg['run']}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stderr, result.stderr[-3000:]  # the tracer's notices stay quiet
    return {"run": run, "seg_run": seg["run"], "seg_cache": seg["cache"], "cohort": paths["cohort"]}


def _exit_2_one_line(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        export_module.main(list(argv))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_the_export_holds_both_graphs_and_one_card_with_both_contracts_and_the_dice(bundle):
    run, seg_run = bundle["run"], bundle["seg_run"]
    folder = run / "export"
    assert (folder / "model.onnx").is_file() and (folder / "segmenter.onnx").is_file()
    card = read_card(folder)  # sealed, seal intact
    classifier = torch.load(find_checkpoint(run), map_location="cpu", weights_only=False)
    seg_ckpt = find_checkpoint(seg_run, kind="segmenter")
    segmenter = torch.load(seg_ckpt, map_location="cpu", weights_only=False)
    section = card["segmenter"]
    assert card["input_contract"] == classifier["input_contract"]
    assert section["input_contract"] == segmenter["input_contract"]
    assert section["input_contract"]["kind"] == "segmenter"
    assert section["checkpoint"] == str(seg_ckpt) and section["checkpoint_sha256"] == _sha(seg_ckpt)
    assert section["segmenter_onnx_sha256"] == _sha(folder / "segmenter.onnx")
    assert section["onnx_max_abs_diff"] < 1e-4
    metrics = json.loads((seg_run / "metrics.json").read_text())
    splits = pd.read_csv(seg_run / "splits.csv")
    tests = int((splits["split"] == "test").sum())
    assert section["test_dice"]["mean"] == pytest.approx(metrics["test/patient_dice"])
    assert section["test_dice"]["min"] == pytest.approx(metrics["test/patient_dice_min"])
    assert section["test_dice"]["n_patients"] == tests > 0
    assert section["run_dir"] == str(seg_run) and "task=segment" in section["command"]
    markdown = (folder / "MODEL_CARD.md").read_text()
    assert "## Segmenter" in markdown
    assert f"mean {metrics['test/patient_dice']:.3f}, min {metrics['test/patient_dice_min']:.3f}" in markdown
    assert f"over {tests} test patients" in markdown
    # The graph: image [B, C, H, W] -> probability [B, 1, H, W], any batch and window.
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "segmenter.onnx"))
    channels = len(section["input_contract"]["modalities"])
    out = session.run(None, {"image": np.zeros((3, channels, 40, 24), np.float32)})[0]
    assert out.shape == (3, 1, 40, 24) and ((out >= 0) & (out <= 1)).all()
    assert export_module.check(run) == 0


def test_the_onnx_segmenter_gives_the_checkpoints_masks(bundle):
    folder = bundle["run"] / "export"
    onnx = open_segmenter(folder)
    assert isinstance(onnx, OnnxSegmenter) and onnx.kind == "onnx"
    bundled = bundled_segmenter(folder)
    assert isinstance(bundled, OnnxSegmenter) and bundled.contract == onnx.contract
    torch_segmenter = open_segmenter(bundle["seg_run"], device="cpu")
    assert isinstance(torch_segmenter, Segmenter) and torch_segmenter.kind == "checkpoint"
    assert onnx.contract == torch_segmenter.contract
    assert onnx.test_dice == pytest.approx(torch_segmenter.test_dice)
    assert onnx.threshold == torch_segmenter.threshold == 0.5
    assert onnx.path == folder / "segmenter.onnx"
    datamodule = SegmentationDataModule(
        root=bundle["cohort"],
        cache_dir=bundle["seg_cache"],
        progress=False,
        preprocess={"workers": 1},
        slices={"strategy": "brain", "min_brain_fraction": 0.01},
    )
    datamodule.prepare_data()
    datamodule.setup()
    cached = datamodule.cached
    called = 0
    for position in range(3):
        volume = cached.volume(position)
        expected = torch_segmenter.segment(volume, cached.modalities)
        found = onnx.segment(volume, cached.modalities)
        assert found.dtype == bool and found.shape == expected.shape
        assert np.count_nonzero(found != expected) <= 5
        called += int(expected.sum())
    assert called > 0  # the masks compared are not all empty
    # Brain-free slices stay False with both.
    empty = np.zeros_like(cached.volume(0))
    assert not onnx.segment(empty, cached.modalities).any()


def test_an_export_without_a_segmenter_bundles_none(bundle, tmp_path):
    plain = export_module.export(bundle["run"], tmp_path / "plain")
    assert not (plain / "segmenter.onnx").exists() and "segmenter" not in read_card(plain)
    assert bundled_segmenter(plain) is None
    with pytest.raises(SegmenterError, match="bundles no segmenter"):
        open_segmenter(plain)


def _misfit(bundle, tmp_path: Path, case: str) -> str:
    """The SEG argument of a hostile case."""
    classifier = bundle["run"]
    if case == "classifier run":
        return str(classifier)
    if case == "classifier checkpoint":
        return str(find_checkpoint(classifier))
    if case == "missing":
        return str(tmp_path / "no_such_run")
    copy = tmp_path / "seg_copy"
    shutil.copytree(bundle["seg_run"], copy, ignore=shutil.ignore_patterns("tensorboard", "last.ckpt"))
    ckpt = find_checkpoint(copy, kind="segmenter")
    if case == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:2000])
    else:
        stored = torch.load(ckpt, map_location="cpu", weights_only=False)
        contract = stored["input_contract"]
        if case == "other grid":
            contract["grid"]["shape"] = [48, 48, 20]
        elif case == "other preprocessing":
            contract["preprocess"]["normalisation"] = "minmax"
        torch.save(stored, ckpt)
    return str(copy)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("classifier run", "is a classifier (task=classify), not a segmenter"),
        ("classifier checkpoint", "is a classifier (task=classify), not a segmenter"),
        ("missing", "no such run directory or checkpoint"),
        ("truncated", "truncated or damaged"),
        ("other grid", "grid has shape"),
        ("other preprocessing", "preprocess normalisation="),
    ],
)
def test_a_misfit_segmenter_is_refused_in_one_line_keeping_the_export(bundle, tmp_path, capsys, case, says):
    folder = bundle["run"] / "export"
    before = {str(p.relative_to(folder)): _sha(p) for p in folder.rglob("*") if p.is_file()}
    seg = _misfit(bundle, tmp_path, case)
    form = ["--segmenter", seg] if case == "missing" else [f"segmenter={seg}"]
    line = _exit_2_one_line(capsys, str(bundle["run"]), *form)
    # a checkpoint inside a run is named by its run
    assert says in line and (str(bundle["run"]) if case == "classifier checkpoint" else seg) in line
    assert {str(p.relative_to(folder)): _sha(p) for p in folder.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in bundle["run"].iterdir() if p.name.startswith(".export")) == []


def test_a_segmenter_where_the_classifier_goes_is_refused(bundle, capsys):
    line = _exit_2_one_line(capsys, str(bundle["seg_run"]), f"segmenter={bundle['run']}")
    assert f"{bundle['seg_run']} is a segmenter run (task=segment)" in line


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "edited card"])
def test_a_tampered_bundled_segmenter_is_refused_in_one_line(bundle, tmp_path, damage):
    folder = tmp_path / "export"
    shutil.copytree(bundle["run"] / "export", folder)
    if damage == "flipped byte":
        _flip_byte(folder / "segmenter.onnx")
        says = "segmenter_onnx_sha256"
    elif damage == "truncated":
        graph = folder / "segmenter.onnx"
        graph.write_bytes(graph.read_bytes()[:1000])
        says = "segmenter_onnx_sha256"
    else:
        card = json.loads((folder / "model_card.json").read_text())
        card["segmenter"]["test_dice"]["mean"] = 0.99
        (folder / "model_card.json").write_text(json.dumps(card, indent=2))
        says = "edited or damaged"
    for opener in (open_segmenter, bundled_segmenter):
        with pytest.raises(SegmenterError) as err:
            opener(folder)
        assert says in str(err.value) and "\n" not in str(err.value)


def test_check_says_when_the_bundled_segmenters_checkpoint_changed(bundle, tmp_path, capsys):
    run, seg = tmp_path / "run", tmp_path / "seg"
    shutil.copytree(bundle["run"], run, ignore=shutil.ignore_patterns("export"))
    shutil.copytree(bundle["seg_run"], seg, ignore=shutil.ignore_patterns("tensorboard", "last.ckpt"))
    export_module.export(run, segmenter=seg)
    capsys.readouterr()
    assert export_module.check(run) == 0
    ckpt = find_checkpoint(seg, kind="segmenter")
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    stored["epoch"] = 99  # retrained or resumed since export
    torch.save(stored, ckpt)
    assert export_module.check(run) == 1
    out = capsys.readouterr().out
    assert f"{run / 'export'} is stale" in out and f"checkpoint {ckpt} changed since export" in out
    with pytest.raises(SystemExit) as stop:
        export_module.main([str(run), "--check"])
    assert stop.value.code == 1
    # Exporting again without segmenter= says that the segmenter is no longer bundled.
    capsys.readouterr()
    export_module.export(run)
    assert f"the one it replaces bundled {seg}" in capsys.readouterr().out
    assert not (run / "export" / "segmenter.onnx").exists()

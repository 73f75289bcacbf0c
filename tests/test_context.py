"""data.context: neighbouring slices as channels (modality-major, edges clamped), read in one
call; crop and context recorded in the input contract, enforced by evaluate.py and applied
alike by predict.py's streamed path."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cohorts import make_datamodule
from helpers.commands import run_python
from helpers.runs import tiny_train_args
from omegaconf import OmegaConf

from gliograde.contract.input_contract import ContractError, check_model, enforce, from_config
from gliograde.data.batches.dataset import SliceDataset


@pytest.mark.parametrize("plane, depth_axis", [("axial", 2), ("coronal", 1)])
def test_context_channels_are_the_neighbouring_slices_clamped_at_the_edges(
    tiny_cohort_master, tmp_path, plane, depth_axis
):
    dm = make_datamodule(
        tiny_cohort_master,
        tmp_path / "cache",
        split=None,
        context=1,
        modalities=["t2", "flair"],
        slices={"strategy": "range", "plane": plane},  # every slice: both edges included
        transfer_dtype="float32",
    )
    dm.prepare_data()
    dm.setup()
    assert dm.num_channels == 6
    dataset = dm.datasets["all"]
    depth = dm.cached.shape[depth_axis]
    rows = np.flatnonzero(dataset.patient_positions == 0)
    batch = dataset.batch(rows)
    assert batch["image"].shape == (depth, 6, *batch["image"].shape[2:])
    whole = dm.cached.volume(0)  # [z, modality, y, x] on the full grid

    def cache_slice(modality: str, z: int) -> np.ndarray:
        volume = whole[:, dm.cached.modalities.index(modality)]
        return np.asarray(volume[z] if plane == "axial" else volume[:, z, :], dtype=np.float32)

    for row, z in enumerate(batch["slice_index"].tolist()):
        neighbours = [max(z - 1, 0), z, min(z + 1, depth - 1)]
        expected = [cache_slice(m, n) for m in ("t2", "flair") for n in neighbours]
        assert np.array_equal(batch["image"][row].numpy(), np.stack(expected))
    first = batch["image"][list(batch["slice_index"]).index(0)]
    assert torch.equal(first[0], first[1]) and torch.equal(first[3], first[4])  # z-1 clamped to 0


def test_context_and_crop_together_match_the_context_alone_then_cropped(tiny_cohort_master, tmp_path):
    base = dict(split=None, context=2, transfer_dtype="float32")
    plain = make_datamodule(tiny_cohort_master, tmp_path / "cache", **base)
    tumour = {"mode": "tumor", "size": 20}
    cropped = make_datamodule(tiny_cohort_master, tmp_path / "cache", crop=tumour, **base)
    for dm in (plain, cropped):
        dm.prepare_data()
        dm.setup()
    rows = np.arange(len(plain.datasets["all"]))[:8]
    full = plain.datasets["all"].batch(rows)["image"].numpy()
    small = cropped.datasets["all"].batch(rows)["image"].numpy()
    centres = cropped.datasets["all"].centres[rows]
    assert small.shape == (8, 20, 20, 20)
    padded = np.pad(full, ((0, 0), (0, 0), (20, 20), (20, 20)))
    for row, (r, c) in enumerate(centres):
        assert np.array_equal(small[row], padded[row, :, r + 10 : r + 30, c + 10 : c + 30])


def test_context_reads_the_cache_once_per_batch(tiny_cohort_master, tmp_path, monkeypatch):
    dm = make_datamodule(tiny_cohort_master, tmp_path / "cache", split=None, context=1)
    dm.prepare_data()
    dm.setup()
    calls = []
    original = SliceDataset._read
    def counted(self, slots, slices):
        calls.append(len(slices))
        return original(self, slots, slices)

    monkeypatch.setattr(SliceDataset, "_read", counted)
    dm.datasets["all"].batch(list(range(5)))
    assert calls == [15]


def test_contract_records_crop_and_context_and_refuses_a_contradiction(cfg_train):
    data = OmegaConf.merge(cfg_train.data, {"crop": {"mode": "tumor", "size": 64}, "context": 1})
    contract = from_config(data)
    assert contract["crop"] == {"mode": "tumor", "size": 64} and contract["context"] == 1
    check_model(contract, 12, ["LGG", "HGG"])
    with pytest.raises(ContractError, match="context 1"):
        check_model(contract, 4, ["LGG", "HGG"])
    for change, key, model_value in [
        ({"crop": {"mode": "brain"}}, "data.crop.mode", "tumor"),
        ({"crop": {"size": 32}}, "data.crop.size", "64"),
        ({"context": 0}, "data.context", "1"),
    ]:
        given = OmegaConf.merge(data, change)
        with pytest.raises(ContractError, match=rf"{key}=\S+ contradicts .* {key}={model_value} "):
            enforce(contract, given, set())
    # an older run's config has neither key: the model's values are filled in
    old = OmegaConf.create(OmegaConf.to_container(cfg_train.data))  # as config.yaml loads
    del old["crop"], old["context"]
    enforce(contract, old, set())
    assert old.crop.mode == "tumor" and old.crop.size == 64 and old.context == 1


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """A one-epoch ResNet18 on 12 patients of 40x40x20 with data.crop.mode=tumor size=64 context=1."""
    from gliograde.data.synthetic.generator import generate_cohort

    base = tmp_path_factory.mktemp("context_run")
    paths = {"cohort": base / "cohort", "cache": base / "cache", "run": base / "run"}
    generate_cohort(
        paths["cohort"], patients=12, seed=5, shape=(40, 40, 20), lgg_fraction=0.5, compress=False
    )
    result = run_python(
        *tiny_train_args(
            paths,
            "data.crop.mode=tumor",
            "data.crop.size=64",
            "data.context=1",
            "data.slices.k=3",
            "data.batch_size=12",
            f"hydra.run.dir={paths['run']}",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    yield paths
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_train_evaluate_predict_with_tumour_crops_and_context(run, tmp_path):
    ckpt = next((run["run"] / "checkpoints").glob("*.ckpt"))
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    contract = stored["input_contract"]
    assert contract["crop"] == {"mode": "tumor", "size": 64} and contract["context"] == 1
    assert contract["image_size"] == [64, 64] and stored["hyper_parameters"]["in_channels"] == 12

    evaluated = run_python(
        "evaluate.py",
        f"run_dir={run['run']}",
        "bootstrap=20",
        "gradcam_n=1",
        f"output_dir={tmp_path / 'eval'}",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    with open(tmp_path / "eval" / "patient_predictions.csv", newline="") as fh:
        reference = {r["patient_id"]: r for r in csv.DictReader(fh)}
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["crop_rules"].values()) == {"tumor"}
    assert list((tmp_path / "eval").glob("gradcam_*.png"))

    patient = sorted(reference)[0]
    predicted = run_python(
        "predict.py", f"ckpt={run['run']}", f"input={run['cohort'] / patient}", f"output_dir={tmp_path / 'p'}"
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    row = json.loads((tmp_path / "p" / "predictions.json").read_text())["patients"][0]
    assert row["probabilities"]["HGG"] == pytest.approx(float(reference[patient]["probability"]), abs=1e-5)
    assert row["n_slices"] == int(reference[patient]["n_slices"]) and row["slice_rule"] == "mask"
    assert (tmp_path / "p" / f"{patient}_gradcam.png").stat().st_size > 1000

    no_mask = tmp_path / "P1"
    shutil.copytree(run["cohort"] / patient, no_mask)
    (no_mask / f"{patient}_seg.nii").unlink()
    for path in no_mask.iterdir():
        path.rename(no_mask / path.name.replace(patient, "P1"))
    out = tmp_path / "q"
    refused = run_python("predict.py", f"ckpt={run['run']}", f"input={no_mask}", f"output_dir={out}")
    assert refused.returncode == 2 and "patient P1 has no tumour mask" in refused.stderr
    assert "mask_free=brain" in refused.stderr and not out.exists()
    alone = run_python(
        "predict.py", f"ckpt={run['run']}", f"input={no_mask}", f"output_dir={out}", "gradcam=false",
        "mask_free=brain",
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "graded by the brain rule without a tumour mask" in (out / "predictions.json").read_text()
    assert ",brain,,\n" in (out / "predictions.csv").read_text()  # no mask: no tumour volume (nor ingestion check)


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, key, model_value",
    [
        ("data.crop.mode=brain", "data.crop.mode", "tumor"),
        ("data.crop.size=32", "data.crop.size", "64"),
        ("data.context=2", "data.context", "1"),
    ],
)
def test_evaluate_refuses_crop_and_context_overrides(run, tmp_path, override, key, model_value):
    result = run_python(
        "evaluate.py",
        f"run_dir={run['run']}",
        override,
        f"data.cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / 'o'}",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert f"{override} contradicts" in line and f"{key}={model_value} " in line
    assert not (tmp_path / "cache").exists() and not (tmp_path / "o").exists()

"""The tumour segmenter's parts: the mask store beside the cache, the patient Dice, the module's
loss, segment() on a volume, tumour measures, contracts of kind segmenter, task=segment options."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.cohorts import patient_file
from helpers.configs import compose_config

from gliograde.config.compose import check_command_line
from gliograde.contract.input_contract import ContractError, refuse_kind
from gliograde.data.batches.crops import slice_boxes
from gliograde.errors import ConfigError
from gliograde.segmentation import masks as masks_module
from gliograde.segmentation.datamodule import SegmentationDataModule
from gliograde.segmentation.inference import Segmenter, check_compatible, open_segmenter
from gliograde.segmentation.volume import SegmenterError
from gliograde.segmentation.masks import MaskStoreError, open_or_build_masks, store_directory
from gliograde.segmentation.metrics import PatientDice, slice_counts
from gliograde.segmentation.module import TumourSegmenter
from gliograde.segmentation.network import PaddedUNet
from gliograde.segmentation.tumour import tumour_measures, volume_ml

TINY_FEATURES = (4, 4, 8, 8, 16, 4)


def _datamodule(root, cache_dir, **overrides) -> SegmentationDataModule:
    options = dict(
        root=root,
        cache_dir=cache_dir,
        batch_size=8,
        progress=False,
        preprocess={"workers": 1},
        slices={"strategy": "brain", "min_brain_fraction": 0.01},
    )
    options.update(overrides)
    return SegmentationDataModule(**options)


def _ready(root, cache_dir) -> SegmentationDataModule:
    datamodule = _datamodule(root, cache_dir)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def _nifti_tumour(root, patient) -> np.ndarray:
    """The binarised mask as nibabel reads it, (z, y, x)."""
    return np.asarray(nib.load(str(patient_file(root, patient, "seg"))).dataobj).T != 0


# ------------------------------------------------------------------ mask store
def test_the_mask_store_is_built_once_and_aligned_with_the_cache_rows(tiny_cohort, tmp_path, monkeypatch):
    datamodule = _ready(tiny_cohort, tmp_path / "cache")
    cached, store = datamodule.cached, datamodule.masks
    assert store.directory == store_directory(cached.directory)
    assert store.rows().shape == (cached.layout.rows, *cached.layout.block)
    for position, patient in enumerate(cached.patient_ids[:6]):
        expected = _nifti_tumour(tiny_cohort, patient)
        assert expected.any()
        assert np.array_equal(store.volume(int(cached.slots[position])), expected)
    # A training batch's masks are the NIfTI mask's slices of its (patient, slice) rows.
    dataset = datamodule.datasets["train"]
    batch = dataset.batch(list(range(len(dataset))))
    assert batch["mask"].shape == (len(batch["patient_id"]), 1, 40, 40) and batch["mask"].dtype == torch.uint8
    for b, (patient, z) in enumerate(zip(batch["patient_id"], batch["slice_index"].tolist())):
        assert np.array_equal(
            batch["mask"][b, 0].numpy().astype(bool), _nifti_tumour(tiny_cohort, patient)[z]
        )
    # Slices with and without tumour are both trained on.
    tumour_slices = batch["mask"].flatten(1).any(dim=1)
    assert tumour_slices.any() and not tumour_slices.all()

    built = []
    monkeypatch.setattr(masks_module, "_build", lambda *args: built.append(args))
    again = _ready(tiny_cohort, tmp_path / "cache")
    assert again.masks.directory == store.directory and built == []


def test_a_changed_mask_file_or_a_stale_store_is_rebuilt(tiny_cohort, tmp_path):
    datamodule = _ready(tiny_cohort, tmp_path / "cache")
    patient = datamodule.cached.patient_ids[0]
    path = patient_file(tiny_cohort, patient, "seg")
    image = nib.load(str(path))
    grown = np.asarray(image.dataobj).copy()
    grown[5:15, 5:15, 8:12] = 2  # a larger tumour, inside the brain box
    nib.save(nib.Nifti1Image(grown, image.affine, image.header), str(path))
    changed = _ready(tiny_cohort, tmp_path / "cache")
    slot = int(changed.cached.slots[changed.cached.position(patient)])
    assert np.array_equal(changed.masks.volume(slot), grown.T != 0)

    meta_path = changed.masks.directory / masks_module.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["masks"][patient]["size"] += 1  # as if built from another file
    meta_path.write_text(json.dumps(meta))
    store = open_or_build_masks(changed.prepared)
    assert json.loads(meta_path.read_text())["masks"][patient]["size"] == path.stat().st_size
    assert np.array_equal(store.volume(slot), grown.T != 0)
    leftovers = [
        p.name for p in store.directory.parent.iterdir() if p.name.startswith(".masks") and p.is_dir()
    ]
    assert leftovers == []


def test_a_missing_store_in_a_read_only_cache_dir_is_refused_in_one_line(tiny_cohort, tmp_path, monkeypatch):
    datamodule = _ready(tiny_cohort, tmp_path / "cache")
    directory = datamodule.masks.directory
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    os.chmod(directory.parent, 0o555)
    try:
        monkeypatch.setattr(masks_module, "_is_writable", lambda folder: False)  # root writes anywhere
        with pytest.raises(MaskStoreError) as err:
            open_or_build_masks(datamodule.prepared)
    finally:
        os.chmod(directory.parent, 0o755)
    message = str(err.value)
    assert (
        "\n" not in message
        and str(directory) in message
        and "read-only" in message
        and "data.cache_dir" in message
    )


def test_a_patient_without_a_mask_is_refused_before_the_cache_is_built(tiny_cohort, tmp_path):
    patient = sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())[3]
    patient_file(tiny_cohort, patient, "seg").unlink()
    with pytest.raises(MaskStoreError) as err:
        _datamodule(tiny_cohort, tmp_path / "cache").prepare_data()
    message = str(err.value)
    assert "\n" not in message and patient in message and f"{patient}_seg" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize(
    "options, key",
    [
        ({"crop": {"mode": "brain", "size": 32}}, "data.crop.mode"),
        ({"augment": {"enabled": True}}, "data.augment.enabled"),
        ({"device_cache": True}, "data.device_cache"),
    ],
)
def test_segment_data_options_that_would_misalign_masks_are_refused(tiny_cohort, tmp_path, options, key):
    with pytest.raises(ConfigError) as err:
        _datamodule(tiny_cohort, tmp_path / "cache", **options)
    assert key in str(err.value) and "task=segment" in str(err.value)


# ------------------------------------------------------------- Dice and module
def test_patient_dice_sums_slices_per_patient_and_counts_no_tumour_none_predicted_as_1():
    target = torch.zeros(4, 1, 6, 6, dtype=torch.bool)
    predicted = torch.zeros_like(target)
    target[0, 0, :2, :2] = True  # patient 0, slice 0: 4 tumour voxels, 2 found, 1 false alarm
    predicted[0, 0, :1, :2] = True
    predicted[0, 0, 5, 5] = True
    target[1, 0, 3:5, 3:5] = True  # patient 0, slice 1: 4 tumour voxels, all missed
    counts = slice_counts(predicted, target)
    assert counts.tolist() == [[2, 1, 2], [0, 0, 4], [0, 0, 0], [0, 0, 0]]
    metric = PatientDice()
    patient, slices = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    metric.update(counts, patient, slices)
    metric.update(counts[:1], patient[:1], slices[:1])  # a repeated (padded) row counts once
    rows = metric.compute()
    assert rows["patient"].tolist() == [0, 1]
    assert rows["counts"].tolist() == [[2, 1, 6], [0, 0, 0]]
    assert rows["dice"].tolist() == pytest.approx([4 / (4 + 1 + 6), 1.0])
    # A patient without tumour where some is predicted scores 0.
    metric.reset()
    metric.update(torch.tensor([[0, 3, 0]]), torch.tensor([2]), torch.tensor([0]))
    assert metric.compute()["dice"].reshape(-1).tolist() == [0.0]


@pytest.mark.slow  # a few seconds: kept out of the fast suite's 90 s
def test_the_module_loss_decreases_and_its_patient_metrics_are_logged():
    torch.manual_seed(0)
    model = TumourSegmenter(in_channels=2, features=TINY_FEATURES, optimizer={"lr": 0.01})
    images = torch.randn(6, 2, 20, 20) * 0.1
    masks = torch.zeros(6, 1, 20, 20, dtype=torch.uint8)
    masks[:3, 0, 4:12, 6:14] = 1  # three slices with tumour, three without
    images[:, 0] += masks[:, 0] * 2.0
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(40):
        loss = model.loss_fn(model(images), masks.float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model(images).shape == (6, 1, 20, 20)  # 20x20 padded to 32 inside, cropped back

    logged = {}
    model.log_dict = lambda values, **kwargs: logged.update(values)
    with torch.no_grad():
        predicted = model(images).sigmoid() > 0.5
    metric = model.patient_dice["val_patients"]
    metric.update(slice_counts(predicted, masks > 0), torch.tensor([0, 0, 0, 1, 1, 1]), torch.arange(6))
    values = model._log_patient_metrics("val")
    assert set(logged) == {"val/patient_dice", "val/patient_dice_min", "val/patient_count"}
    assert values["val/patient_dice"].item() > 0.9 and values["val/patient_count"].item() == 2


# ------------------------------------------------------------------- segment()
def _segmenter(modalities, bias: float) -> Segmenter:
    network = PaddedUNet(len(modalities), TINY_FEATURES).eval()
    with torch.no_grad():
        final = network.unet.final_conv
        final.weight.zero_()
        final.bias.fill_(bias)  # every pixel tumour (bias > 0) or none
    contract = {"kind": "segmenter", "modalities": list(modalities), "context": 0}
    return Segmenter(path=None, contract=contract, test_dice=None, network=network)


def test_segment_returns_a_bool_mask_on_the_grid_and_skips_slices_without_brain():
    stored = ["flair", "t1", "t1ce", "t2"]
    volume = np.zeros((7, 4, 24, 40), dtype=np.float16)
    volume[2:5, 2, 5:10, 5:10] = 1.0  # t1ce: brain in slices 2-4
    volume[5, 0, 5:10, 5:10] = 1.0  # flair only: no brain for a t1ce model
    mask = _segmenter(["t1ce"], 20.0).segment(volume, stored)
    assert mask.shape == (7, 24, 40) and mask.dtype == bool
    assert not mask[[0, 1, 5, 6]].any()
    # The network sees the brain's box, widened by 16 and grown to a multiple of 16: x 0-31 here.
    assert mask[2:5, :, :32].all() and not mask[2:5, :, 32:].any()
    assert not _segmenter(["t1ce"], -20.0).segment(volume.astype(np.float32), stored).any()
    with pytest.raises(SegmenterError, match="t2"):
        _segmenter(["t2"], 1.0).segment(volume[:, :3], stored[:3])


def test_tumour_measures_are_the_caches_areas_and_boxes():
    mask = np.zeros((5, 8, 9), dtype=bool)
    mask[1, 2:4, 3:7] = True
    mask[3, 5, 1] = True
    measures = tumour_measures(mask)
    assert measures.voxels == 9
    assert measures.areas["axial"].tolist() == [0, 8, 0, 1, 0] and measures.areas["axial"].dtype == np.int32
    assert measures.areas["coronal"].tolist() == [0, 0, 4, 4, 0, 1, 0, 0]
    assert measures.areas["sagittal"].sum() == 9
    for plane in ("axial", "coronal", "sagittal"):
        assert np.array_equal(measures.boxes[plane], slice_boxes(mask, plane))
    assert (
        measures.boxes["axial"][1].tolist() == [2, 3, 3, 6]
        and measures.boxes["axial"][0].tolist() == [-1] * 4
    )


def test_tumour_measures_of_a_stored_mask_equal_the_caches(tiny_cohort, tmp_path):
    datamodule = _ready(tiny_cohort, tmp_path / "cache")
    cached = datamodule.cached
    for position in range(3):
        measures = tumour_measures(datamodule.masks.volume(int(cached.slots[position])))
        for plane in ("axial", "coronal", "sagittal"):
            assert np.array_equal(measures.areas[plane], cached.tumour_area[plane][position])
            assert np.array_equal(measures.boxes[plane], cached.tumour_boxes[plane][position])


def test_volume_ml():
    assert volume_ml(1000, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert volume_ml(500, (2.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert volume_ml(0, (1.0, 1.0, 1.0)) == 0.0
    with pytest.raises(ValueError):
        volume_ml(10, (1.0, 0.0, 1.0))


# ---------------------------------------------------------- contracts and opening
def _contract(kind="segmenter", **changes):
    contract = {
        "kind": kind,
        "modalities": ["flair", "t1ce"],
        "grid": {"shape": [40, 40, 20], "spacing": [1.0, 1.0, 1.0], "orientation": "LPS"},
        "preprocess": {
            "normalisation": "zscore_nonzero",
            "reorient": None,
            "clip_percentiles": None,
            "cache_dtype": "float16",
            "mask_labels": [0, 1, 2, 4],
        },
    }
    contract.update(changes)
    return contract


def test_check_compatible_names_the_difference():
    classifier = _contract("classifier", modalities=["flair", "t1", "t1ce"])
    check_compatible(_contract(), classifier, "SEG")
    cases = [
        (_contract(modalities=["flair", "t2"]), "['t2']"),
        (_contract(grid={"shape": [48, 40, 20], "spacing": [1.0, 1.0, 1.0], "orientation": "LPS"}), "shape"),
        (
            _contract(grid={"shape": [40, 40, 20], "spacing": [1.0, 1.0, 2.0], "orientation": "LPS"}),
            "spacing",
        ),
        (
            _contract(grid={"shape": [40, 40, 20], "spacing": [1.0, 1.0, 1.0], "orientation": "RAS"}),
            "orientation",
        ),
        (
            _contract(preprocess={**_contract()["preprocess"], "clip_percentiles": [0.5, 99.5]}),
            "clip_percentiles",
        ),
        (_contract(preprocess={**_contract()["preprocess"], "reorient": "RAS"}), "reorient"),
    ]
    for segmenter, difference in cases:
        with pytest.raises(SegmenterError) as err:
            check_compatible(segmenter, classifier, "SEG")
        assert "SEG" in str(err.value) and difference in str(err.value) and "\n" not in str(err.value)


def test_refuse_kind():
    refuse_kind({"modalities": ["flair"]}, "classifier", "RUN")  # recorded before kinds: a classifier
    refuse_kind({"kind": "segmenter"}, "segmenter", "RUN")
    with pytest.raises(ContractError, match="RUN is a segmenter run \\(task=segment\\).*segmenter=RUN"):
        refuse_kind({"kind": "segmenter"}, "classifier", "RUN")
    with pytest.raises(ContractError, match="RUN is a classifier run \\(task=classify\\)"):
        refuse_kind({}, "segmenter", "RUN")


def test_open_segmenter_refuses_missing_classifier_and_damaged_checkpoints(tmp_path):
    model = TumourSegmenter(in_channels=2, features=TINY_FEATURES)
    contract = _contract()
    good = tmp_path / "good.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "input_contract": contract,
        },
        good,
    )
    opened = open_segmenter(good, device="cpu")
    assert opened.contract == contract and opened.test_dice is None and opened.threshold == 0.5

    classifier = tmp_path / "classifier.ckpt"
    torch.save(
        {"state_dict": {}, "hyper_parameters": {}, "input_contract": _contract("classifier")}, classifier
    )
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for source, expected in [
        (tmp_path / "nowhere", "no such run directory or checkpoint"),
        (classifier, "is a classifier (task=classify)"),
        (truncated, "truncated or damaged"),
        (tmp_path, "expected one best checkpoint"),
    ]:
        with pytest.raises(SegmenterError) as err:
            open_segmenter(source)
        assert expected in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------- options
def test_task_group_composes_and_refuses_mismatches():
    cfg = compose_config("train", ["task=segment"])
    assert cfg.task == "segment" and cfg.monitor == "val/patient_dice" and cfg.model.features[0] == 8
    assert cfg.data.slices.strategy == "brain" and cfg.data.crop.mode == "none"
    assert compose_config("train", []).task == "classify"
    check_command_line("train", ["-m", "task=segment", "model.optimizer.lr=0.001,0.003"])
    for argv, expected in [
        (["task=foo"], "task=foo: no such task config; choose one of classify, segment"),
        (["task=segment", "model=resnet18"], "task=segment trains a segmenter: use model=unet"),
        (["model=unet"], "add task=segment"),
        (["task=segment", "data.crop.mode=tumor"], "data.crop.mode=tumor is not available with task=segment"),
        (["task=segment", "model.features=[8,16]"], "model.features"),
    ]:
        with pytest.raises(ConfigError) as err:
            check_command_line("train", argv)
        assert expected in str(err.value) and "\n" not in str(err.value)

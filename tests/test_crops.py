"""data.crop: tumour crops centred on the slice's tumour box, brain crops on the patient's brain
box, zeros where the square leaves the image; the boxes come from the cache's index."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from helpers.cohorts import TINY_SHAPE, make_datamodule, patient_file

from gliograde.data.batches.crops import NO_MASK_RULE, TUMOUR_RULE, crop, slice_boxes
from gliograde.data.discovery.specs import MODALITIES
from gliograde.errors import ConfigError

# The handmade patient: brain (nonzero voxels) in y 2..30, x 12..39 of every axial slice,
# tumour in y 2..6, x 30..36 of slices 8..11 (its four tumour slices: tumor_topk k=4 takes them).
BRAIN_Y, BRAIN_X = (2, 30), (12, 39)
TUMOUR_Y, TUMOUR_X, TUMOUR_Z = (2, 6), (30, 36), (8, 11)


def _handmade(root, patient: str, with_mask: bool = True) -> None:
    """Rewrite ``patient``'s files with the known brain and tumour (file axes are x, y, z)."""
    rng = np.random.default_rng(1)
    affine = np.eye(4)
    for modality in MODALITIES:
        data = np.zeros(TINY_SHAPE, dtype=np.float32)
        data[BRAIN_X[0] : BRAIN_X[1] + 1, BRAIN_Y[0] : BRAIN_Y[1] + 1, :] = rng.uniform(
            1, 2, (BRAIN_X[1] - BRAIN_X[0] + 1, BRAIN_Y[1] - BRAIN_Y[0] + 1, TINY_SHAPE[2])
        )
        nib.save(nib.Nifti1Image(data, affine), patient_file(root, patient, modality))
    seg_path = patient_file(root, patient, "seg")
    if not with_mask:
        seg_path.unlink()
        return
    seg = np.zeros(TINY_SHAPE, dtype=np.int16)
    seg[TUMOUR_X[0] : TUMOUR_X[1] + 1, TUMOUR_Y[0] : TUMOUR_Y[1] + 1, TUMOUR_Z[0] : TUMOUR_Z[1] + 1] = 1
    nib.save(nib.Nifti1Image(seg, affine), seg_path)


def _patient_rows(datamodule, patient: str):
    dataset = datamodule.datasets["all"]
    position = datamodule.cached.position(patient)
    rows = np.flatnonzero(dataset.patient_positions == position)
    return dataset, rows, datamodule.cached.slots[position]


def _window(volume_slice: np.ndarray, centre: tuple[int, int], size: int) -> np.ndarray:
    """The reference crop: the slice zero-padded by ``size`` on every side, then sliced."""
    padded = np.pad(volume_slice, ((0, 0), (size, size), (size, size)))
    top, left = centre[0] - size // 2 + size, centre[1] - size // 2 + size
    return padded[:, top : top + size, left : left + size]


@pytest.fixture
def first_patient(tiny_cohort) -> str:
    return sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())[0]


def test_tumour_crop_is_centred_on_the_slice_tumour_and_zero_padded(tiny_cohort, first_patient, tmp_path):
    _handmade(tiny_cohort, first_patient)
    dm = make_datamodule(tiny_cohort, tmp_path / "cache", split=None, crop={"mode": "tumor", "size": 16})
    dm.prepare_data()
    dm.setup()
    dataset, rows, _ = _patient_rows(dm, first_patient)
    batch = dataset.batch(rows)
    image = batch["image"].float().numpy()
    assert image.shape == (len(rows), 4, 16, 16) and dm.num_channels == 4
    assert sorted(batch["slice_index"].tolist()) == list(range(TUMOUR_Z[0], TUMOUR_Z[1] + 1))
    centre = ((TUMOUR_Y[0] + TUMOUR_Y[1]) // 2, (TUMOUR_X[0] + TUMOUR_X[1]) // 2)  # (4, 33)
    volume = dm.cached.volume(dm.cached.position(first_patient))  # [z, modality, y, x]
    channels = [MODALITIES.index(m) for m in dm.modalities]
    for row, z in enumerate(batch["slice_index"].tolist()):
        expected = _window(np.asarray(volume[z][channels], dtype=np.float32), centre, 16)
        assert np.array_equal(image[row], expected)
        assert (image[row, :, 8, 8] == volume[z, channels, centre[0], centre[1]]).all()
        assert (image[row, :, 8, 8] != 0).all()  # the tumour's centre is brain
    # rows -4..-1 and column 40 lie outside the 40x40 image: zeros; the rest of the tumour box is not
    assert (image[:, :, :4] == 0).all() and (image[:, :, :, 15] == 0).all()
    assert (image[:, :, 8 - 2 : 8 + 3, 8 - 3 : 8 + 4] != 0).all()
    assert dm.crop_rules[first_patient] == TUMOUR_RULE


def test_brain_crop_is_centred_on_the_patient_brain_box(tiny_cohort, first_patient, tmp_path):
    _handmade(tiny_cohort, first_patient)
    brain = {"mode": "brain", "size": 24}
    dm = make_datamodule(tiny_cohort, tmp_path / "cache", split=None, crop=brain, transfer_dtype="float32")
    dm.prepare_data()
    dm.setup()
    dataset, rows, _ = _patient_rows(dm, first_patient)
    batch = dataset.batch(rows)
    centre = ((BRAIN_Y[0] + BRAIN_Y[1]) // 2, (BRAIN_X[0] + BRAIN_X[1]) // 2)  # (16, 25)
    volume = dm.cached.volume(dm.cached.position(first_patient))  # [z, modality, y, x]
    channels = [MODALITIES.index(m) for m in dm.modalities]
    for row, z in enumerate(batch["slice_index"].tolist()):
        expected = _window(np.asarray(volume[z][channels], dtype=np.float32), centre, 24)
        assert np.array_equal(batch["image"][row].numpy(), expected)
    assert batch["image"].shape[-2:] == (24, 24) and dm.crop_rules[first_patient] == "brain"


def test_without_a_mask_the_tumour_crop_takes_the_brain_centre_and_says_so(
    tiny_cohort, first_patient, tmp_path, caplog
):
    _handmade(tiny_cohort, first_patient, with_mask=False)
    options = dict(split=None, slices={"strategy": "middle", "n": 3})
    tumour = make_datamodule(tiny_cohort, tmp_path / "cache", crop={"mode": "tumor", "size": 24}, **options)
    brain = make_datamodule(tiny_cohort, tmp_path / "cache", crop={"mode": "brain", "size": 24}, **options)
    for dm in (tumour, brain):
        dm.prepare_data()
        dm.setup()
    assert tumour.crop_rules[first_patient] == NO_MASK_RULE
    assert [rule for p, rule in tumour.crop_rules.items() if p != first_patient] == [TUMOUR_RULE] * 23
    said = "no tumour mask, so data.crop.mode=tumor centres their crops on the brain's box instead"
    assert f"{said}: {first_patient}" in caplog.text
    rows = _patient_rows(tumour, first_patient)[1]
    images = [dm.datasets["all"].batch(rows)["image"] for dm in (tumour, brain)]
    assert np.array_equal(*images)


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_slice_boxes_agree_with_each_slice_mask(plane):
    rng = np.random.default_rng(0)
    mask = rng.random((6, 7, 8)) > 0.97  # (z, y, x), a few scattered voxels
    mask[:, 0, 0] = False
    take = {
        "axial": lambda i: mask[i],
        "coronal": lambda i: mask[:, i, :],
        "sagittal": lambda i: mask[:, :, i],
    }
    boxes = slice_boxes(mask, plane)
    assert len(boxes) == {"axial": 6, "coronal": 7, "sagittal": 8}[plane]
    for i, box in enumerate(boxes):
        rows, cols = np.nonzero(take[plane](i))
        expected = [rows.min(), rows.max(), cols.min(), cols.max()] if rows.size else [-1] * 4
        assert box.tolist() == expected


def test_crop_keeps_the_centre_at_half_size_for_odd_and_even_sizes():
    images = np.arange(2 * 1 * 5 * 6, dtype=np.float32).reshape(2, 1, 5, 6) + 1
    centres = np.array([[0, 0], [4, 5]])
    for size in (3, 4):
        out = crop(images, centres, size)
        assert out.shape == (2, 1, size, size)
        assert out[0, 0, size // 2, size // 2] == images[0, 0, 0, 0]
        assert out[1, 0, size // 2, size // 2] == images[1, 0, 4, 5]
        assert (out[0, 0, : size // 2] == 0).all() and (out[1, 0, size // 2 + 1 :] == 0).all()


@pytest.mark.parametrize(
    "options, key",
    [
        ({"crop": {"mode": "face"}}, "data.crop.mode"),
        ({"crop": {"size": 0}}, "data.crop.size"),
        ({"context": -1}, "data.context"),
    ],
)
def test_bad_crop_and_context_values_are_refused(tiny_cohort, tmp_path, options, key):
    with pytest.raises(ConfigError, match=key):
        make_datamodule(tiny_cohort, tmp_path / "cache", **options)

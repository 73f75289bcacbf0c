"""Brain crops place their centre on the brain of the run's own modalities: a cache that also
stores other modalities, and predict's streamed path that decodes the model's alone, give the
model the same images."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from helpers.cohorts import make_datamodule, patient_file

from gliograde.contract.input_contract import from_datamodule
from gliograde.data.batches.crops import modality_union
from gliograde.inference.inputs import PatientFiles
from gliograde.inference.stream import load_patient

FIRST = "BraTS20_Training_001"


def _widen_t1(root, patient: str) -> None:
    """Give ``patient``'s T1 nonzero voxels in a corner column where no other modality has any."""
    path = patient_file(root, patient, "t1")
    image = nib.load(path)
    data = np.asarray(image.dataobj).copy()
    data[:2, :2, :] = data.max()
    nib.save(nib.Nifti1Image(data, image.affine, image.header), path)


@pytest.mark.parametrize(
    ("modalities", "crop_mode"),
    [(["flair"], "brain"), (["t1ce", "flair"], "tumor")],  # tumor: the mask-free patient's fallback
)
def test_cached_and_streamed_crops_agree_on_a_wider_cache(tiny_cohort, tmp_path, modalities, crop_mode):
    _widen_t1(tiny_cohort, FIRST)
    patient_file(tiny_cohort, FIRST, "seg").unlink()
    dm = make_datamodule(
        tiny_cohort,
        tmp_path / "cache",
        split=None,
        modalities=modalities,
        slices={"strategy": "middle", "n": 3},
        crop={"mode": crop_mode, "size": 16},
        transfer_dtype="float32",
    )
    dm.prepare_data()
    dm.setup()
    cached = dm.cached
    assert cached.modalities == ("flair", "t1", "t1ce", "t2")  # stores more than the run uses
    position = cached.position(FIRST)
    # The widened T1 enlarges the four-modality brain box, not the run's.
    run_boxes = cached.brain_boxes_of(modalities, "axial")[position]
    all_boxes = cached.brain_boxes_of(cached.modalities, "axial")[position]
    assert (run_boxes[:, 0] != 0).all() and (all_boxes[:, 0] == 0).all()

    dataset = dm.datasets["all"]
    rows = np.flatnonzero(dataset.patient_positions == position)
    batch = dataset.batch(rows)
    order = np.argsort(batch["slice_index"].numpy())
    files = PatientFiles(FIRST, {m: patient_file(tiny_cohort, FIRST, m) for m in modalities}, None)
    streamed = load_patient(files, from_datamodule(dm), resample=False)
    np.testing.assert_array_equal(streamed.slice_index, batch["slice_index"].numpy()[order])
    np.testing.assert_array_equal(streamed.images.astype(np.float32), batch["image"].numpy()[order])


def test_modality_union_joins_each_slices_boxes_over_the_chosen_modalities():
    empty = [-1, -1, -1, -1]
    boxes = np.array(
        [
            [[2, 5, 3, 6], [1, 4, 4, 9], empty],  # slice 0: modalities 0 and 1 overlap
            [empty, [0, 2, 7, 8], empty],  # slice 1: modality 1 alone
            [empty, empty, [3, 3, 3, 3]],  # slice 2: modality 2 alone
        ],
        dtype=np.int32,
    )
    np.testing.assert_array_equal(
        modality_union(boxes, [0, 1]), [[1, 5, 3, 9], [0, 2, 7, 8], empty]
    )
    np.testing.assert_array_equal(modality_union(boxes, [0]), [[2, 5, 3, 6], empty, empty])
    np.testing.assert_array_equal(modality_union(boxes[None], [2])[0], [empty, empty, [3, 3, 3, 3]])

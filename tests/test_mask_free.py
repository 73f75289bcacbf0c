"""Patients without a tumour mask: refused where the model needs one, graded by a mask-free rule
only when asked (mask_free=brain), each patient's rule recorded; masks=hidden; tumor_weighted."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.cohorts import make_datamodule, patient_file
from helpers.configs import compose_config
from omegaconf import OmegaConf

from gliograde.data.errors import DataError
from gliograde.data.prepared import Tumour
from gliograde.data.slices import select_slices
from gliograde.data.specs import SliceSpec
from gliograde.errors import ConfigError, GliogradeError
from gliograde.evaluation.report import report_dir
from gliograde.mask_free import MissingMaskError, mask_free_note, refuse_missing_masks
from gliograde.schema import validate_config

TUMOUR_SLICES = {"slices": {"strategy": "tumor_topk", "k": 4}, "crop": {"mode": "none", "size": 128}}
TUMOUR_CROP = {"slices": {"strategy": "brain"}, "crop": {"mode": "tumor", "size": 16}}
BRAIN = {"slices": {"strategy": "brain"}, "crop": {"mode": "none", "size": 128}}


def test_mask_free_and_masks_options_are_checked_in_one_line():
    for bad, key in (("mask_free=tumor_topk", "mask_free"), ("masks=shown", "masks")):
        with pytest.raises(ConfigError, match=key) as err:
            validate_config(compose_config("evaluate", ["run_dir=R", bad]), "evaluate")
        assert "\n" not in str(err.value)
    cfg = compose_config("evaluate", ["run_dir=R", "mask_free=brain", "masks=hidden"])
    validate_config(cfg, "evaluate")
    assert cfg.mask_free == "brain" and compose_config("evaluate", ["run_dir=R"]).mask_free is None
    assert compose_config("predict", []).mask_free is None
    with pytest.raises(ConfigError, match="mask_free='tumor_all' must be null .* \\['brain', 'middle', 'range'\\]"):
        from gliograde.mask_free import check_mask_free

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
    with pytest.raises(MissingMaskError, match="aggregate=tumor_weighted .* patient P1 has no tumour mask") as err:
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

"""Hospital-like scans back to the model's space: a posed head with skull comes back onto the
model grid with its brain, a foreign or flipped series fails the quality check with the check
named, a missing t1ce falls back to t1 with a note. Small volumes (64x64x40) here; one patient
at full size (the accuracy and time the ingestion promises) is the slow test."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks.ingest_accuracy import measure, model_space_patient, synthetic_template
from gliograde.data.errors import DataError
from gliograde.errors import ConfigError
from gliograde.ingest.hospital_scans import flip_left_right, scanner_images
from gliograde.ingest.model_space import to_model_space
from gliograde.ingest.quality import check_quality, template_brain_ml

SMALL = (64, 64, 40)
# Small heads give the agreement histogram fewer voxels; the full-size defaults are for heads.
SMALL_LIMITS: dict[str, float] = {}  # the brain-volume check is relative to the template: any head size


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return synthetic_template(tmp_path_factory.mktemp("template") / "t", patients=4, shape=SMALL)


@pytest.fixture(scope="module")
def patient():
    original = model_space_patient(3, "HGG", SMALL)
    scan = scanner_images(original, np.random.default_rng(53), resolution="iso")
    return original, scan


@pytest.fixture(scope="module")
def ingested(template, patient):
    return to_model_space(patient[1].images, template)


def test_scanner_images_are_posed_series_of_clinical_geometry():
    original = model_space_patient(0, "LGG", SMALL)
    scan = scanner_images(original, np.random.default_rng(1))
    images = scan.images
    assert set(images) == {"flair", "t1", "t1ce", "t2"}
    assert all(image.GetPixelID() == sitk.sitkInt16 for image in images.values())
    assert images["flair"].GetSpacing()[2] == pytest.approx(5.0)
    assert images["t2"].GetSpacing() == pytest.approx((0.6, 0.6, 4.0))
    assert images["t1ce"].GetSpacing() == pytest.approx((1.0, 1.0, 1.0))
    # T1 is sagittal: its slices run left to right.
    assert abs(np.array(images["t1"].GetDirection()).reshape(3, 3)[0, 2]) == pytest.approx(1.0)
    # The truth maps series points onto the original: T1ce sampled back through it is the original.
    grid = original["t1ce"]
    to_series = scan.truth["to_model"]["t1ce"].GetInverse()
    back = sitk.Resample(sitk.Cast(images["t1ce"], sitk.sitkFloat32), grid, to_series)
    brain = sitk.GetArrayViewFromImage(grid) > 0
    values = sitk.GetArrayViewFromImage(grid)[brain], sitk.GetArrayViewFromImage(back)[brain]
    assert np.corrcoef(*values)[0, 1] > 0.85
    # There is a head around the brain: bright scalp where the original has nothing.
    head = sitk.GetArrayViewFromImage(images["t1ce"])
    assert (head > 0.5 * np.median(head[head > 0])).sum() > 1.3 * brain.sum()
    with pytest.raises(ValueError, match="resolution"):
        scanner_images(original, np.random.default_rng(1), resolution="thin")


def test_a_posed_head_with_skull_comes_back_onto_the_model_grid(template, patient, ingested):
    original, scan = patient
    grid = template.grid
    assert ingested.reference == "t1ce" and ingested.notes == []
    assert set(ingested.transforms) == {"t1ce_to_template", "flair_to_t1ce", "t1_to_t1ce", "t2_to_t1ce"}
    for volume in ingested.volumes.values():
        assert volume.GetSize() == grid.GetSize() and volume.GetPixelID() == sitk.sitkFloat32
        np.testing.assert_allclose(volume.GetOrigin(), grid.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(volume.GetDirection(), grid.GetDirection(), atol=1e-6)
        outside = sitk.GetArrayViewFromImage(ingested.brain) == 0
        assert not sitk.GetArrayViewFromImage(volume)[outside].any()  # skull-stripped
    figures = measure(original, ingested, scan.truth)
    assert figures["dice_raw"] >= 0.90 and figures["dice"] >= 0.90
    for m in ("flair", "t1", "t1ce", "t2"):
        assert figures[f"ncc_{m}"] >= 0.90, (m, figures)
    quality = check_quality(ingested, template, SMALL_LIMITS)
    assert quality.passed, quality.failed
    assert list(quality.rows["modality"]) == ["flair", "t1", "t1ce", "t2"]
    assert quality.brain_ml == pytest.approx(sitk.GetArrayViewFromImage(ingested.brain).sum() / 1000)


@pytest.mark.slow  # a few seconds: kept out of the fast suite's 90 s
def test_a_series_of_another_patient_fails_the_agreement_check(template, patient):
    other = scanner_images(model_space_patient(31, "LGG", SMALL), np.random.default_rng(61), resolution="iso")
    images = dict(patient[1].images, flair=other.images["flair"])
    quality = check_quality(to_model_space(images, template), template, SMALL_LIMITS)
    assert not quality.passed
    assert [f for f in quality.failed if f.startswith("flair: agreement with t1ce")], quality.failed
    assert not [f for f in quality.failed if not f.startswith("flair")], quality.failed


@pytest.mark.slow  # a whole registration each: kept out of the fast suite's budget
def test_a_series_flipped_left_right_in_its_header_is_named(template, patient):
    images = dict(patient[1].images, t2=flip_left_right(patient[1].images["t2"]))
    quality = check_quality(to_model_space(images, template), template, SMALL_LIMITS)
    assert "t2: flipped left-right against t1ce" in quality.failed
    assert not [f for f in quality.failed if not f.startswith("t2")], quality.failed
    row = quality.rows.set_index("modality").loc["t2"]
    assert bool(row["mirrored_better"]) and row["mirror_gain"] > 0.1


@pytest.mark.slow  # a whole registration each: kept out of the fast suite's budget
def test_without_t1ce_the_series_are_registered_to_t1_and_the_notes_say_so(template, patient):
    original, scan = patient
    images = {m: image for m, image in scan.images.items() if m != "t1ce"}
    result = to_model_space(images, template)
    assert result.reference == "t1"
    assert result.notes == ["no t1ce: registered to t1"]
    assert set(result.volumes) == {"flair", "t1", "t2"}
    assert set(result.transforms) == {"t1_to_template", "flair_to_t1", "t2_to_t1"}
    figures = measure(original, result, scan.truth)
    assert figures["dice"] >= 0.90 and figures["ncc_t1"] >= 0.90 and figures["ncc_flair"] >= 0.85
    quality = check_quality(result, template, SMALL_LIMITS)
    assert quality.passed, quality.failed


@pytest.mark.slow  # a whole registration each: kept out of the fast suite's budget
def test_a_given_brain_mask_wins(template, patient):
    scan = patient[1]
    reference = scan.images["t1ce"]
    # A box in the reference's scanner space: the brain on the model grid is that box moved.
    box = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    box.CopyInformation(reference)
    size = reference.GetSize()
    box[size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2, size[2] // 4 : size[2] // 2] = 1
    result = to_model_space(scan.images, template, brain_mask=box, n4=False)
    to_reference = result.transforms["t1ce_to_template"]
    expected = sitk.Resample(box, template.grid, to_reference, sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.brain), sitk.GetArrayFromImage(expected))


def test_quality_names_an_implausible_brain_volume_and_refuses_unknown_thresholds(template, ingested):
    quality = check_quality(ingested, template, {"min_brain_fraction": 1.2})
    assert not quality.passed
    expected = template_brain_ml(template)
    assert [f for f in quality.failed if f.startswith("brain volume") and f"of the template's {expected:.0f} mL" in f]
    assert [f for f in quality.failed if "(allowed 1.20-1.50)" in f]
    with pytest.raises(ConfigError, match="unknown quality threshold"):
        check_quality(ingested, template, {"min_ncc": 0.5})


@pytest.mark.slow
def test_a_full_size_hospital_patient_is_accurate_and_fast(tmp_path):
    template = synthetic_template(tmp_path / "template", patients=4)
    original = model_space_patient(11, "LGG")
    clock = time.perf_counter()
    scan = scanner_images(original, np.random.default_rng(11))
    scan_s = time.perf_counter() - clock
    clock = time.perf_counter()
    ingested = to_model_space(scan.images, template)
    quality = check_quality(ingested, template)
    seconds = time.perf_counter() - clock
    figures = measure(original, ingested, scan.truth)
    assert scan_s < 10, scan_s
    assert seconds < 60, (seconds, ingested.scores["timings"])
    assert figures["dice_raw"] >= 0.90 and figures["dice"] >= 0.90, figures
    for m in ("t1ce", "t1"):
        assert figures[f"ncc_{m}"] >= 0.90, figures
    for m in ("flair", "t2"):
        assert figures[f"ncc_{m}"] >= 0.80, figures
    # The 4 mm T2's slices that mixed the brain's caps with bright CSF are not brain: 0.87 with them.
    assert figures["ncc_t2"] >= 0.90, figures
    assert quality.passed, quality.failed


def test_a_reference_that_does_not_fit_the_template_is_named(template, ingested):
    # The same volumes, moved 8 mm and turned 15 degrees on the grid: the template no longer fits.
    turn = sitk.Euler3DTransform()
    middle = [(s - 1) / 2 for s in template.grid.GetSize()]
    turn.SetCenter(template.grid.TransformContinuousIndexToPhysicalPoint(middle))
    turn.SetRotation(np.deg2rad(15), 0.0, 0.0)
    turn.SetTranslation((8.0, 0.0, 0.0))
    moved = {m: sitk.Resample(v, v, turn, sitk.sitkLinear, 0.0) for m, v in ingested.volumes.items()}
    displaced = type(ingested)(**{**vars(ingested), "volumes": moved})
    quality = check_quality(displaced, template, SMALL_LIMITS)
    assert [f for f in quality.failed if f.startswith("t1ce: template_ncc")], quality.failed
    assert check_quality(ingested, template, SMALL_LIMITS).passed


def test_a_series_that_cannot_be_registered_is_one_line(template, patient):
    images = dict(patient[1].images)
    far = sitk.Image(images["flair"])
    # a header whose position puts the series a metre away: no overlap to register from
    far.SetOrigin([c + 1000.0 for c in far.GetOrigin()])
    images["flair"] = far
    with pytest.raises(DataError) as err:
        to_model_space(images, template)
    message = str(err.value)
    assert "registering flair to t1ce failed" in message and "\n" not in message

"""A cohort needs only the modalities a run asks for: discovery, the cache's channels, the brain
area of the run's own modalities, and train/evaluate/predict on a FLAIR-only cohort."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.cohorts import make_datamodule, patient_file
from helpers.commands import run_python
from helpers.runs import tiny_run, tiny_train_args

from gliograde.data.discovery.cohort import discover_cohort
from gliograde.data.errors import DataError
from gliograde.data.discovery.identity import content_matches, fingerprint_table, id_collisions
from gliograde.data.discovery.specs import LabelSpec, LayoutSpec
from gliograde.inference.inputs import from_manifest

FIRST = "BraTS20_Training_001"


def _drop(root: Path, modalities: tuple[str, ...]) -> None:
    """Delete every patient's files of ``modalities``."""
    for folder in root.iterdir():
        if folder.is_dir():
            for modality in modalities:
                (folder / f"{folder.name}_{modality}.nii").unlink()


def _widen_t1(root: Path, patient: str) -> None:
    """Give one patient's T1 nonzero voxels where no other modality has any (a corner column)."""
    path = patient_file(root, patient, "t1")
    image = nib.load(path)
    data = np.asarray(image.dataobj).copy()
    data[:2, :2, :] = data.max()
    nib.save(nib.Nifti1Image(data, image.affine, image.header), path)


def test_discovery_requires_only_the_asked_modalities(tiny_cohort):
    _drop(tiny_cohort, ("t1", "t1ce", "t2"))
    cohort = discover_cohort(tiny_cohort, LayoutSpec(), LabelSpec(), True, modalities=("flair",))
    assert not cohort.problems and len(cohort.patients) == 24
    assert cohort.modalities == ("flair",)
    assert all(list(p.modalities) == ["flair"] and p.mask is not None for p in cohort.patients)

    four = discover_cohort(tiny_cohort, LayoutSpec(), LabelSpec(), True)
    assert not four.patients and len(four.problems) == 24
    first = four.problems[0]
    assert first.patient == FIRST
    assert f"missing t1 file (expected {FIRST}_t1.nii[.gz])" in str(first)
    assert "\n" not in str(first)


def test_other_modalities_are_kept_only_when_every_patient_has_them(tiny_cohort):
    (tiny_cohort / FIRST / f"{FIRST}_t1ce.nii").unlink()
    cohort = discover_cohort(tiny_cohort, LayoutSpec(), LabelSpec(), True, modalities=("t2", "flair"))
    assert not cohort.problems and cohort.modalities == ("flair", "t1", "t2")
    assert all(tuple(p.modalities) == ("flair", "t1", "t2") for p in cohort.patients)


def test_a_two_modality_cache_stores_two_channels_and_the_runs_brain(tiny_cohort, tmp_path):
    """Each modality is z-scored alone, so a channel is the same in any cache; the brain area is
    that of the run's modalities, whichever cache serves the run."""
    _widen_t1(tiny_cohort, FIRST)
    wanted = dict(modalities=["t2", "flair"], slices={"strategy": "brain", "min_brain_fraction": 0.5})
    four = make_datamodule(tiny_cohort, tmp_path / "cache", **wanted)
    four.prepare_data()
    four.setup()
    assert four.cached.modalities == ("flair", "t1", "t1ce", "t2")  # the cohort has all four

    pair_root = tmp_path / "pair"
    shutil.copytree(tiny_cohort, pair_root)
    _drop(pair_root, ("t1", "t1ce"))
    pair = make_datamodule(pair_root, tmp_path / "cache", **wanted)
    pair.prepare_data()
    pair.setup()
    assert pair.cached.directory != four.cached.directory
    assert pair.cached.modalities == ("flair", "t2")
    wide = np.load(four.cached.volumes_path, mmap_mode="r")
    narrow = np.load(pair.cached.volumes_path, mmap_mode="r")
    assert narrow.shape[1] == 2 and wide.shape[1] == 4  # [row, channel, y, x]
    assert set(pair.cached.fingerprints) == {"flair", "t2"}
    assert pair.cached.fingerprints["flair"] == four.cached.fingerprints["flair"]

    position = four.cached.position(FIRST)
    assert pair.cached.position(FIRST) == position
    volume_wide, volume_narrow = four.cached.volume(position), pair.cached.volume(position)
    np.testing.assert_array_equal(volume_narrow[:, 0], volume_wide[:, 0])  # flair
    np.testing.assert_array_equal(volume_narrow[:, 1], volume_wide[:, 3])  # t2
    # The widened T1 enlarges the four-modality brain, not the brain of flair and t2.
    for plane in ("axial", "coronal", "sagittal"):
        np.testing.assert_array_equal(
            pair.cached.brain_area_of(pair.cached.modalities, plane),
            four.cached.brain_area_of(["flair", "t2"], plane),
        )
    wide = four.cached.brain_area_of(four.cached.modalities, "coronal")[position]
    assert (wide > pair.cached.brain_area_of(pair.cached.modalities, "coronal")[position]).any()

    # So the run sees the same slices and values from either cache, in its own channel order.
    assert [(p.patient_id, list(p.slices)) for p in four.patients] == [
        (p.patient_id, list(p.slices)) for p in pair.patients
    ]
    a = four.datasets["train"].batch([0, 1, 2])
    b = pair.datasets["train"].batch([0, 1, 2])
    assert a["patient_id"] == b["patient_id"] and a["image"].shape[1] == 2
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    z = int(a["slice_index"][0])
    np.testing.assert_array_equal(
        a["image"][0, 0].numpy(), pair.cached.volume(int(b["patient"][0]))[z, 1]
    )  # channel 0 is t2


def test_a_cache_refuses_a_modality_it_does_not_hold(tiny_cohort, tmp_path):
    _drop(tiny_cohort, ("t1", "t1ce", "t2"))
    dm = make_datamodule(tiny_cohort, tmp_path / "cache", modalities=["flair"])
    dm.prepare_data()
    with pytest.raises(DataError, match=r"holds no t2 channel \(it holds \['flair'\]\)"):
        dm.cached.brain_area_of(["flair", "t2"], "axial")


def test_a_manifest_needs_only_the_models_columns(tmp_path):
    for name in ("a_flair.nii", "a_seg.nii"):
        (tmp_path / name).write_bytes(b"")
    manifest = tmp_path / "list.csv"
    manifest.write_text("patient_id,notes,flair,mask\nA,first visit,a_flair.nii,a_seg.nii\n")
    (patient,) = from_manifest(manifest, ["flair"])
    assert dict(patient.modalities) == {"flair": tmp_path / "a_flair.nii"}
    assert patient.mask == tmp_path / "a_seg.nii"
    needs = r"missing column\(s\) \['t2'\]; needs patient_id, flair, t2\[, mask\]"
    with pytest.raises(DataError, match=needs):
        from_manifest(manifest, ["t2", "flair"])


def test_leak_checks_compare_the_modalities_both_sides_have():
    flair_only = fingerprint_table(["P1", "P2"], {"flair": ["f1", "f2"]})
    four = fingerprint_table(["P1", "X"], {"flair": ["f1", "f9"], "t2": ["t1", "f2"]})
    t2_only = fingerprint_table(["P1"], {"t2": ["other"]})
    assert [m.describe() for m in content_matches(flair_only, four)] == ["P1: same flair voxels"]
    assert id_collisions(flair_only, t2_only) == []  # nothing in common to compare
    assert id_collisions(four, t2_only) == ["P1"]


@pytest.fixture(scope="module")
def flair_run(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """The shared tiny cohort without its T1, T1ce and T2 files, and a [flair] run on it."""
    source = tiny_run(tmp_path_factory)["cohort"]
    base = tmp_path_factory.mktemp("flair_only")
    paths = {"cohort": base / "cohort", "cache": base / "cache", "run": base / "run"}
    shutil.copytree(source, paths["cohort"])
    _drop(paths["cohort"], ("t1", "t1ce", "t2"))
    result = run_python(
        *tiny_train_args(paths, "data.modalities=[flair]"),
        f"hydra.run.dir={paths['run']}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    yield paths
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_flair_only_cohort_trains_evaluates_and_predicts(flair_run, tmp_path):
    run, cohort = flair_run["run"], flair_run["cohort"]
    with open(run / "splits.csv", newline="") as fh:
        splits = list(csv.DictReader(fh))
    assert [c for c in splits[0] if c.startswith("fingerprint_")] == ["fingerprint_flair"]
    tested = sorted(r["patient_id"] for r in splits if r["split"] == "test")

    evaluated = run_python(
        "evaluate.py", f"run_dir={run}", "bootstrap=20", "gradcam_n=0", f"output_dir={tmp_path / 'eval'}"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    with open(tmp_path / "eval" / "patient_predictions.csv", newline="") as fh:
        reference = {r["patient_id"]: r for r in csv.DictReader(fh)}
    assert sorted(reference) == tested

    by_folder = run_python(
        "predict.py", f"ckpt={run}", f"input={cohort}", f"output_dir={tmp_path / 'a'}", "gradcam=false"
    )
    assert by_folder.returncode == 0, by_folder.stderr[-3000:]
    manifest = tmp_path / "list.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "mask", "flair", "site"])
        for patient in tested:
            folder = cohort / patient
            writer.writerow([patient, folder / f"{patient}_seg.nii", folder / f"{patient}_flair.nii", "x"])
    by_manifest = run_python(
        "predict.py", f"ckpt={run}", f"manifest={manifest}", f"output_dir={tmp_path / 'b'}", "gradcam=false"
    )
    assert by_manifest.returncode == 0, by_manifest.stderr[-3000:]
    for out in ("a", "b"):
        with open(tmp_path / out / "predictions.csv", newline="") as fh:
            predicted = {r["patient_id"]: r for r in csv.DictReader(fh)}
        for patient in tested:
            assert float(predicted[patient]["prob_HGG"]) == pytest.approx(
                float(reference[patient]["probability"]), abs=1e-5
            )
            assert int(predicted[patient]["n_slices"]) == int(reference[patient]["n_slices"])

    # The model needs FLAIR: a patient without it is one line naming the patient and the file.
    lacking = tmp_path / "P9"
    lacking.mkdir()
    shutil.copy(cohort / tested[0] / f"{tested[0]}_seg.nii", lacking / "P9_seg.nii")
    shutil.copy(cohort / tested[0] / f"{tested[0]}_seg.nii", lacking / "P9_t2.nii")
    refused = run_python("predict.py", f"ckpt={run}", f"input={lacking}", f"output_dir={tmp_path / 'c'}")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "patient P9" in refused.stderr
    assert "no flair volume (looked for <folder name>_flair.nii[.gz]" in refused.stderr

    # A four-modality run on the same cohort: one line naming the patient and the missing file.
    four = run_python(*tiny_train_args(flair_run, f"hydra.run.dir={tmp_path / 'four'}"))
    assert four.returncode == 2 and "Traceback" not in four.stderr
    assert f"patient {FIRST}" in four.stderr
    assert f"missing t1 file (expected {FIRST}_t1.nii[.gz]" in four.stderr

"""Tests of the synthetic BraTS-2020-layout cohort (gliograde.data.synthetic.generator) and its CLI."""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gliograde import synthetic as cli
from gliograde.data.synthetic import anatomy
from gliograde.data.synthetic import generator as synthetic
from gliograde.data.synthetic.generator import assign_grades, generate_cohort, synthesize_patient

TINY = (32, 32, 16)
SMALL = (48, 48, 24)
KEYS = ("flair", "t1", "t1ce", "t2", "seg")
COLUMNS = [
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
]
CSF, GM, WM = 1, 2, 3


def read_mapping(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(root / "name_mapping.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def patient(seed: int, grade: str, shape=SMALL):
    """Volumes and the healthy-tissue map (0 bg, 1 CSF, 2 GM, 3 WM) of one patient."""
    rng = np.random.default_rng(seed)
    volumes, tissue = anatomy._synthesize(rng, grade, shape, with_tissue=True)
    return {k: v if k == "seg" else v.astype(np.float64) for k, v in volumes.items()}, tissue


def healthy_mean(volumes: dict, tissue: np.ndarray, modality: str, kind: int) -> float:
    """Mean of ``modality`` over tissue ``kind`` outside the tumour."""
    return float(volumes[modality][(tissue == kind) & (volumes["seg"] == 0)].mean())


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    return generate_cohort(root / "brats", patients=6, seed=7, shape=TINY)


# ---------------------------------------------------------------------------------------------
# Layout, CSV, file format


def test_layout_and_file_names(cohort: Path):
    names = [f"BraTS20_Training_{i:03d}" for i in range(1, 7)]
    assert sorted(p.name for p in cohort.iterdir()) == [".synthetic.json"] + names + ["name_mapping.csv"]
    for name in names:
        files = sorted(p.name for p in (cohort / name).iterdir())
        assert files == sorted(f"{name}_{k}.nii.gz" for k in KEYS)
    assert not list(cohort.parent.glob(".*partial*"))


def test_mapping_csv(cohort: Path):
    columns, rows = read_mapping(cohort)
    assert columns == COLUMNS
    ids = [r["BraTS_2020_subject_ID"] for r in rows]
    assert ids == [f"BraTS20_Training_{i:03d}" for i in range(1, 7)]
    assert {r["Grade"] for r in rows} <= {"HGG", "LGG"}
    assert sum(r["Grade"] == "LGG" for r in rows) == round(6 * 76 / 369) == 1
    for r in rows:
        for year, prefix in (("2017", "Brats17_"), ("2018", "Brats18_"), ("2019", "BraTS19_")):
            value = r[f"BraTS_{year}_subject_ID"]
            assert value == "NA" or re.fullmatch(prefix + r"\w+_\d+", value), value
        tcga = r["TCGA_TCIA_subject_ID"]
        assert tcga == "NA" or re.fullmatch(r"TCGA-\w\w-\d{4}", tcga), tcga


def test_mapping_csv_has_na_rows(tmp_path: Path):
    out = generate_cohort(tmp_path / "c", patients=30, seed=1, shape=(24, 24, 12))
    _, rows = read_mapping(out)
    assert any(r["BraTS_2017_subject_ID"] == "NA" for r in rows)
    assert any(r["BraTS_2017_subject_ID"] != "NA" for r in rows)
    assert any(r["TCGA_TCIA_subject_ID"] != "NA" for r in rows)


def test_file_format(cohort: Path):
    _, rows = read_mapping(cohort)
    expected_affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    expected_affine[1, 3] = TINY[1] - 1
    for row in rows:
        name = row["BraTS_2020_subject_ID"]
        for key in KEYS:
            img = nib.load(cohort / name / f"{name}_{key}.nii.gz")
            assert isinstance(img, nib.Nifti1Image)
            dtype = np.uint8 if key == "seg" else np.int16
            assert img.get_data_dtype() == dtype
            assert img.shape == TINY
            assert np.asanyarray(img.dataobj).dtype == dtype
            np.testing.assert_array_equal(img.affine, expected_affine)
            assert img.dataobj.slope == 1 and img.dataobj.inter == 0
        seg = np.asanyarray(nib.load(cohort / name / f"{name}_seg.nii.gz").dataobj)
        labels = set(np.unique(seg).tolist())
        assert labels <= {0, 1, 2, 4}
        if row["Grade"] == "HGG":
            assert {1, 2, 4} <= labels
        else:
            assert {1, 2} <= labels and (seg == 4).sum() <= 7


def test_more_than_999_patients_gets_more_digits(tmp_path: Path, monkeypatch):
    tiny = {k: np.zeros(1, dtype=np.uint8) for k in KEYS}
    monkeypatch.setattr(synthetic, "synthesize_patient", lambda rng, grade, shape, difficulty: tiny)
    written = []
    monkeypatch.setattr(synthetic, "_write_nifti", lambda path, array, affine: written.append(path))
    out = generate_cohort(tmp_path / "big", patients=1000, shape=TINY)
    assert (out / "BraTS20_Training_0001").is_dir() and (out / "BraTS20_Training_1000").is_dir()
    assert "BraTS20_Training_0001/BraTS20_Training_0001_t1.nii.gz" in {
        f"{p.parent.name}/{p.name}" for p in written
    }
    _, rows = read_mapping(out)
    assert rows[-1]["BraTS_2020_subject_ID"] == "BraTS20_Training_1000"


# ---------------------------------------------------------------------------------------------
# Anatomy and contrasts


@pytest.mark.parametrize("shape", [TINY, SMALL])
def test_background_exactly_zero_and_labels_inside_brain(shape):
    for seed, grade in enumerate(["HGG", "LGG", "HGG", "LGG"]):
        volumes, tissue = patient(seed, grade, shape)
        brain = tissue > 0
        for key in ("flair", "t1", "t1ce", "t2"):
            assert (volumes[key][~brain] == 0).all(), key
            assert (volumes[key][brain] > 0).all(), key
        assert (volumes["seg"][~brain] == 0).all()
        # The brain never touches the volume's faces.
        for axis in range(3):
            assert not brain.take([0, -1], axis=axis).any()


def test_brain_size_scales_with_shape():
    for shape in (TINY, SMALL, (96, 80, 40)):
        _, tissue = patient(0, "HGG", shape)
        brain = tissue > 0
        extent = [np.ptp(np.nonzero(brain.any(axis=other))[0]) + 1 for other in ((1, 2), (0, 2), (0, 1))]
        frac = np.array(extent) / np.array(shape)
        assert 0.55 <= frac[0] <= 0.78 and 0.6 <= frac[1] <= 0.8 and frac[2] >= 0.75, (shape, frac)


def test_tissue_contrasts():
    for seed in range(4):
        volumes, tissue = patient(seed, "HGG" if seed % 2 else "LGG")
        healthy = volumes["seg"] == 0
        mean = {
            m: {t: volumes[m][(tissue == t) & healthy].mean() for t in (CSF, GM, WM)}
            for m in ("flair", "t1", "t1ce", "t2")
        }
        for m in ("t1", "t1ce"):
            assert mean[m][WM] > 1.15 * mean[m][GM] > 1.15**2 * mean[m][CSF], (seed, m, mean[m])
        t2 = mean["t2"]
        assert t2[CSF] > 1.15 * t2[GM] > 1.15**2 * t2[WM], (seed, t2)
        flair = mean["flair"]
        assert flair[GM] > 1.1 * flair[WM] > 1.1**2 * flair[CSF], (seed, flair)


def test_images_are_noisy_and_bias_corrupted():
    volumes, tissue = patient(3, "LGG")
    wm = volumes["t1"][(tissue == WM) & (volumes["seg"] == 0)]
    assert wm.std() > 0.01 * wm.mean()
    # Different scanners/patients: the same tissue's intensity scale varies between patients.
    wm_means = []
    for seed in range(8):
        volumes, tissue = patient(seed, "LGG", TINY)
        wm_means.append(volumes["t1"][tissue == WM].mean())
    assert max(wm_means) / min(wm_means) > 1.2


def test_hgg_has_enhancing_rim_on_t1ce():
    for seed in range(6):
        volumes, tissue = patient(seed, "HGG")
        seg, t1ce = volumes["seg"], volumes["t1ce"]
        assert {1, 2, 4} <= set(np.unique(seg).tolist())
        wm = healthy_mean(volumes, tissue, "t1ce", WM)
        assert t1ce[seg == 4].mean() > 1.4 * wm, seed
        assert t1ce[seg == 1].mean() < wm, seed  # necrosis is dark
        assert volumes["t2"][seg == 2].mean() > healthy_mean(volumes, tissue, "t2", WM)
        assert volumes["flair"][seg == 2].mean() > 1.3 * healthy_mean(volumes, tissue, "flair", GM)
        # Visible on a single axial slice: the slice with most enhancement shows a bright rim.
        z = int(np.argmax((seg == 4).sum(axis=(0, 1))))
        sl_seg, sl_t1ce = seg[:, :, z], t1ce[:, :, z]
        brain_2d = sl_t1ce[(sl_seg == 0) & (tissue[:, :, z] > 0)].mean()
        assert sl_t1ce[sl_seg == 4].mean() > 1.4 * brain_2d, seed


def test_lgg_core_does_not_enhance():
    for seed in range(6):
        volumes, tissue = patient(seed, "LGG")
        seg, t1ce = volumes["seg"], volumes["t1ce"]
        assert {1, 2} <= set(np.unique(seg).tolist())
        assert (seg == 4).sum() <= 7
        assert t1ce[seg == 1].mean() < healthy_mean(volumes, tissue, "t1ce", WM), seed
        assert volumes["t1"][seg == 1].mean() < healthy_mean(volumes, tissue, "t1", WM)
        assert volumes["t2"][seg == 1].mean() > 1.2 * healthy_mean(volumes, tissue, "t2", GM)
        assert volumes["flair"][seg == 1].mean() > 1.2 * healthy_mean(volumes, tissue, "flair", GM)


def test_grade_not_given_away_by_intensity_scale():
    scale = {g: [] for g in ("HGG", "LGG")}
    for seed in range(12):
        for g in scale:
            v = synthesize_patient(np.random.default_rng(seed), g, TINY)
            scale[g].append(v["t1ce"][v["t1ce"] > 0].mean())
    # The per-grade ranges of whole-brain mean T1ce overlap: no threshold separates the grades.
    assert min(scale["HGG"]) < max(scale["LGG"]) and min(scale["LGG"]) < max(scale["HGG"])


def test_tumour_size_and_position_vary():
    sizes, centres = [], []
    for seed in range(8):
        seg = synthesize_patient(np.random.default_rng(seed), "HGG", SMALL)["seg"]
        sizes.append(int((seg > 0).sum()))
        centres.append(np.argwhere(seg > 0).mean(axis=0))
    assert max(sizes) > 2 * min(sizes)
    assert np.ptp(np.array(centres), axis=0).max() > 3


def test_bad_arguments(tmp_path: Path):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        synthesize_patient(rng, "GBM", TINY)
    with pytest.raises(ValueError):
        synthesize_patient(rng, "HGG", (8, 8, 4))
    bad = (
        {"patients": 0},
        {"patients": 2, "lgg_fraction": 1.5},
        {"patients": 2, "shape": (32, 32)},
    )
    for kwargs in bad:
        with pytest.raises(ValueError):
            generate_cohort(tmp_path / "bad", **kwargs)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Determinism, class ratio, atomicity


def test_deterministic_bytes(tmp_path: Path):
    a = all_files(generate_cohort(tmp_path / "a", patients=3, seed=5, shape=TINY))
    b = all_files(generate_cohort(tmp_path / "b", patients=3, seed=5, shape=TINY))
    c = all_files(generate_cohort(tmp_path / "c", patients=3, seed=6, shape=TINY))
    assert a == b
    assert a.keys() == c.keys()
    assert any(a[k] != c[k] for k in a if k.endswith(".nii.gz"))


def test_patient_depends_only_on_seed_and_index(tmp_path: Path):
    small = generate_cohort(tmp_path / "s", patients=4, seed=11, shape=TINY)
    large = generate_cohort(tmp_path / "l", patients=7, seed=11, shape=TINY)
    g_small = [r["Grade"] for r in read_mapping(small)[1]]
    g_large = [r["Grade"] for r in read_mapping(large)[1]]
    same = [i for i in range(4) if g_small[i] == g_large[i]]
    assert same  # the check below is not vacuous
    for i in same:
        name = f"BraTS20_Training_{i + 1:03d}"
        for key in KEYS:
            f = f"{name}/{name}_{key}.nii.gz"
            assert (small / f).read_bytes() == (large / f).read_bytes()


@pytest.mark.parametrize(
    "patients, fraction, n_lgg",
    [
        (369, 76 / 369, 76),
        (40, 76 / 369, 8),
        (10, 0.5, 5),
        (2, 0.0, 1),
        (2, 1.0, 1),
        (5, 1.0, 4),
        (1, 76 / 369, 0),
        (1, 1.0, 1),
    ],
)
def test_class_ratio(patients, fraction, n_lgg):
    grades = assign_grades(patients, seed=3, lgg_fraction=fraction)
    assert len(grades) == patients and set(grades) <= {"HGG", "LGG"}
    assert grades.count("LGG") == n_lgg


def test_grades_shuffled_by_seed():
    orders = {tuple(assign_grades(40, seed=s, lgg_fraction=0.25)) for s in range(5)}
    assert len(orders) > 1
    assert assign_grades(40, 9, 0.25) == assign_grades(40, 9, 0.25)
    assert assign_grades(40, 9, 0.25)[:10] != ["LGG"] * 10


def test_refuses_non_empty_folder(tmp_path: Path):
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError) as info:
        generate_cohort(out, patients=2, shape=TINY)
    assert "\n" not in str(info.value) and str(out) in str(info.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]


def test_fills_an_existing_empty_folder(tmp_path: Path):
    out = tmp_path / "cohort"
    out.mkdir()
    generate_cohort(out, patients=2, shape=TINY)
    assert (out / "name_mapping.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch, error):
    real_write = synthetic._write_nifti
    calls = []

    def failing_write(path, array, affine):
        calls.append(path)
        if len(calls) == 7:
            raise error("disk full")
        real_write(path, array, affine)

    monkeypatch.setattr(synthetic, "_write_nifti", failing_write)
    with pytest.raises(error):
        generate_cohort(tmp_path / "cohort", patients=3, shape=TINY)
    assert list(tmp_path.iterdir()) == []
    # A later run starts from scratch and succeeds.
    monkeypatch.setattr(synthetic, "_write_nifti", real_write)
    generate_cohort(tmp_path / "cohort", patients=3, shape=TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]


# ---------------------------------------------------------------------------------------------
# CLI and speed


def test_cli(tmp_path: Path, capsys):
    out = tmp_path / "cli"
    shape = [str(s) for s in TINY]
    argv = [str(out), "--patients", "4", "--seed", "2", "--shape", *shape, "--lgg-fraction", "0.5"]
    rc = cli.main(argv)
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("train on it: python train.py")
    for part in ("4 patients", "2 HGG", "2 LGG", str(out)):
        assert part in lines[0]
    assert len(list(out.glob("BraTS20_Training_*"))) == 4
    img = nib.load(out / "BraTS20_Training_001" / "BraTS20_Training_001_flair.nii.gz")
    assert img.shape == TINY

    with pytest.raises(SystemExit) as exited:
        cli.main([str(out), "--patients", "1", "--shape", *shape])
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([str(tmp_path / "x")])  # --patients is required


@pytest.mark.slow
def test_full_size_patient_under_budget(tmp_path: Path):
    start = time.process_time()  # CPU time of all threads: other work on the machine does not count
    out = generate_cohort(tmp_path / "full", patients=1, seed=0)
    cpu = time.process_time() - start
    assert cpu < 2.0, f"{cpu:.2f} s of CPU for one full-size patient"  # about 0.8 s
    name = "BraTS20_Training_001"
    sizes = {key: (out / name / f"{name}_{key}.nii.gz").stat().st_size for key in KEYS}
    assert sum(sizes.values()) < 16e6, sizes  # about 10.5 MB, 80 MB uncompressed
    seg = np.asanyarray(nib.load(out / name / f"{name}_seg.nii.gz").dataobj)
    t1 = np.asanyarray(nib.load(out / name / f"{name}_t1.nii.gz").dataobj)
    assert seg.shape == t1.shape == (240, 240, 155)
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}  # one patient at the default ratio is HGG
    brain = t1 > 0
    fx = np.ptp(np.nonzero(brain.any(axis=(1, 2)))[0]) / 240
    fz = np.ptp(np.nonzero(brain.any(axis=(0, 1)))[0]) / 155
    assert 0.58 <= fx <= 0.76 and fz > 0.75
    np.testing.assert_array_equal(nib.load(out / name / f"{name}_t1.nii.gz").affine, synthetic.brats_affine(seg.shape))

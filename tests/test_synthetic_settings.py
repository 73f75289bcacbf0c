"""The synthetic cohort's settings (one source of defaults, the record a cohort carries and how
it is compared), its gzip-compressed files, and the ``difficulty`` that makes grade cues overlap."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from gliograde import synthetic as cli
from gliograde.data.synthetic import anatomy
from gliograde.data.synthetic import generator as synthetic
from gliograde.data.synthetic.generator import generate_cohort, synthesize_patient
from gliograde.data.synthetic.settings import (
    DEFAULT_DIFFICULTY,
    DEFAULT_LGG_FRACTION,
    DEFAULT_PATIENTS,
    DEFAULT_SEED,
    DEFAULT_SHAPE,
    GENERATOR_VERSION,
    generation_settings,
    settings_mismatch,
    train_overrides,
)
from gliograde.data.synthetic.anatomy import MIMIC_TISSUE
from gliograde.errors import ConfigError

TINY = (32, 32, 16)
SMALL = (48, 48, 24)
KEYS = ("flair", "t1", "t1ce", "t2", "seg")
PRESET = Path(__file__).resolve().parents[1] / "conf" / "data" / "synthetic.yaml"
DEFAULTS = {
    "patients": DEFAULT_PATIENTS,
    "seed": DEFAULT_SEED,
    "shape": list(DEFAULT_SHAPE),
    "lgg_fraction": DEFAULT_LGG_FRACTION,
    "difficulty": DEFAULT_DIFFICULTY,
}


def volumes_digest(cases) -> str:
    digest = hashlib.sha256()
    for seed, grade, shape in cases:
        volumes = synthesize_patient(np.random.default_rng(seed), grade, shape)
        for key in sorted(volumes):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(volumes[key]).tobytes())
    return digest.hexdigest()


def auroc(hgg: list[float], lgg: list[float]) -> float:
    return float(roc_auc_score([1] * len(hgg) + [0] * len(lgg), hgg + lgg))


# ---------------------------------------------------------------------------------------------
# One source of defaults


def test_preset_cli_and_generator_share_the_defaults():
    preset = OmegaConf.to_container(OmegaConf.load(PRESET).synthetic)
    assert preset == DEFAULTS  # exact: 76/369 is written to the last bit
    parser = cli.build_parser()
    assert parser.get_default("seed") == DEFAULT_SEED
    assert tuple(parser.get_default("shape")) == DEFAULT_SHAPE
    assert parser.get_default("lgg_fraction") == DEFAULT_LGG_FRACTION
    assert parser.get_default("difficulty") == DEFAULT_DIFFICULTY
    assert 0 <= DEFAULT_DIFFICULTY < 1


def test_cli_cohort_matches_the_preset_with_the_printed_overrides(tmp_path: Path, capsys):
    out = tmp_path / "made by hand"
    assert cli.main([str(out), "--patients", "5", "--shape", *map(str, TINY)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == (
        f"train on it: python train.py 'data.root={out}' data.synthetic.patients=5 "
        "'data.synthetic.shape=[32,32,16]'"
    )
    recorded = generation_settings(out)
    assert recorded == {**DEFAULTS, "patients": 5, "shape": list(TINY), "generator": GENERATOR_VERSION}
    preset = OmegaConf.to_container(OmegaConf.load(PRESET).synthetic)
    assert settings_mismatch(recorded, {**preset, "patients": 5, "shape": list(TINY)}) is None
    problem = settings_mismatch(recorded, preset)
    assert problem is not None and "\n" not in problem
    assert "add data.synthetic.patients=5 data.synthetic.shape=[32,32,16];" in problem
    assert "lgg_fraction" not in problem and "difficulty" not in problem


def test_train_overrides_name_only_what_differs():
    assert train_overrides(DEFAULTS) == []
    settings = {**DEFAULTS, "seed": 4, "lgg_fraction": 0.5, "difficulty": 0.3}
    assert train_overrides(settings) == [
        "data.synthetic.seed=4",
        "data.synthetic.lgg_fraction=0.5",
        "data.synthetic.difficulty=0.3",
    ]
    # 0.206 gives the 12 LGG of 76/369 among 60 patients: the same cohort, nothing to override.
    assert train_overrides({**DEFAULTS, "lgg_fraction": 0.206}) == []


def test_settings_mismatch():
    recorded = {**DEFAULTS, "generator": GENERATOR_VERSION}
    assert settings_mismatch(recorded, {**DEFAULTS, "lgg_fraction": 0.206}) is None
    assert settings_mismatch(recorded, {**DEFAULTS, "shape": tuple(DEFAULT_SHAPE)}) is None
    problem = settings_mismatch(recorded, {**DEFAULTS, "difficulty": 0.5})
    assert problem == (
        f"holds a synthetic cohort generated with difficulty={DEFAULT_DIFFICULTY!r}, not the configured "
        f"difficulty=0.5: to train on it add data.synthetic.difficulty={DEFAULT_DIFFICULTY!r}; to generate "
        "the configured one, delete that folder or set data.root elsewhere"
    )
    problem = settings_mismatch(recorded, {**DEFAULTS, "lgg_fraction": 0.3})
    assert problem is not None and "data.synthetic.lgg_fraction=0.20596205962059622" in problem
    # A record made before difficulty existed describes a difficulty-0 cohort.
    legacy = {k: v for k, v in DEFAULTS.items() if k != "difficulty"}
    assert settings_mismatch(legacy, {**DEFAULTS, "difficulty": 0.0}) is None
    assert "difficulty=0.0" in settings_mismatch(legacy, {**DEFAULTS, "difficulty": 0.3})


def test_legacy_record_reads_as_difficulty_zero(tmp_path: Path):
    (tmp_path / ".synthetic.json").write_text(json.dumps({"patients": 3, "seed": 0, "shape": [32, 32, 16], "lgg_fraction": 0.5}))
    assert generation_settings(tmp_path)["difficulty"] == 0.0
    assert generation_settings(tmp_path)["generator"] == 1
    assert generation_settings(tmp_path / "nothing") is None


def test_difficulty_is_recorded_and_changes_the_voxels(tmp_path: Path):
    easy = generate_cohort(tmp_path / "easy", patients=3, seed=2, shape=TINY)
    hard = generate_cohort(tmp_path / "hard", patients=3, seed=2, shape=TINY, difficulty=0.6)
    again = generate_cohort(tmp_path / "again", patients=3, seed=2, shape=TINY, difficulty=0.6)
    assert generation_settings(easy)["difficulty"] == 0.0
    assert generation_settings(hard)["difficulty"] == 0.6
    name = "BraTS20_Training_001"
    for key in ("t1ce", "seg"):
        f = f"{name}/{name}_{key}.nii.gz"
        assert (hard / f).read_bytes() == (again / f).read_bytes()  # deterministic
    t1ce = [np.asarray(nib.load(root / name / f"{name}_t1ce.nii.gz").dataobj) for root in (easy, hard)]
    assert not np.array_equal(*t1ce)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "hard", True])
def test_bad_difficulty(tmp_path: Path, bad):
    with pytest.raises(ConfigError, match="difficulty"):
        generate_cohort(tmp_path / "bad", patients=2, shape=TINY, difficulty=bad)
    with pytest.raises(ConfigError, match="difficulty"):
        synthesize_patient(np.random.default_rng(0), "HGG", TINY, difficulty=bad)
    assert not list(tmp_path.iterdir())


def test_cli_difficulty(tmp_path: Path, capsys):
    out = tmp_path / "d"
    assert cli.main([str(out), "--patients", "2", "--shape", *map(str, TINY), "--difficulty", "0.3"]) == 0
    assert generation_settings(out)["difficulty"] == 0.3
    assert "data.synthetic.difficulty=0.3" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        cli.main([str(tmp_path / "e"), "--patients", "2", "--difficulty", "2"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: synthetic cohort: difficulty must be in [0, 1], got 2.0"
    assert not (tmp_path / "e").exists()


# ---------------------------------------------------------------------------------------------
# Compressed files


def test_files_are_gzip_with_the_same_voxels(tmp_path: Path):
    packed = generate_cohort(tmp_path / "gz", patients=2, seed=4, shape=TINY)
    plain = generate_cohort(tmp_path / "nii", patients=2, seed=4, shape=TINY, compress=False)
    name = "BraTS20_Training_002"
    for key in KEYS:
        gz, nii = packed / name / f"{name}_{key}.nii.gz", plain / name / f"{name}_{key}.nii"
        assert gz.read_bytes()[:2] == b"\x1f\x8b" and not (packed / name / f"{name}_{key}.nii").exists()
        assert gzip.decompress(gz.read_bytes()) == nii.read_bytes()
        assert gz.stat().st_size < nii.stat().st_size
    assert generation_settings(packed) == generation_settings(plain)  # a format, not a setting


# ---------------------------------------------------------------------------------------------
# Difficulty


def test_difficulty_zero_is_the_separable_cohort_bit_for_bit():
    cases = [(0, "HGG", TINY), (1, "LGG", TINY), (2, "HGG", SMALL), (5, "LGG", SMALL), (3, "LGG", (40, 40, 20))]
    # Digest of these patients' voxels as generated before difficulty existed.
    assert volumes_digest(cases) == "1f1722c43a293323a0925c963cf8c0088984bae5df1d414f7511dc4770e7131f"


def enhancement_stats(difficulty: float, n: int = 30) -> dict[str, dict[str, list[float]]]:
    """Per grade: enhancing voxels (label 4) and the tumour's 99th-percentile T1ce over the brain's
    median, over ``n`` SMALL patients."""
    stats = {g: {"enhancing": [], "t1ce": []} for g in ("HGG", "LGG")}
    for seed in range(n):
        for grade, s in stats.items():
            v = synthesize_patient(np.random.default_rng([seed, 9]), grade, SMALL, difficulty)
            t1ce, seg = v["t1ce"], v["seg"]
            s["enhancing"].append(float((seg == 4).sum()))
            s["t1ce"].append(float(np.percentile(t1ce[seg > 0], 99) / np.median(t1ce[t1ce > 0])))
    return stats


def test_difficulty_overlaps_the_grade_cues():
    easy, hard, null = (enhancement_stats(d) for d in (0.0, 0.3, 1.0))
    # At 0 the rim separates the grades perfectly.
    assert min(easy["HGG"]["enhancing"]) > 7 >= max(easy["LGG"]["enhancing"])
    assert auroc(easy["HGG"]["t1ce"], easy["LGG"]["t1ce"]) == 1.0
    # At 0.3 some LGGs enhance as much as a typical HGG and some HGGs barely enhance ...
    assert max(hard["LGG"]["enhancing"]) > np.median(hard["HGG"]["enhancing"])
    assert min(hard["HGG"]["enhancing"]) <= 7
    # ... so the strongest single cue ranks the grades well but not perfectly,
    assert 0.7 <= auroc(hard["HGG"]["t1ce"], hard["LGG"]["t1ce"]) <= 0.97
    # and at 1 it carries no grade information.
    assert 0.3 <= auroc(null["HGG"]["t1ce"], null["LGG"]["t1ce"]) <= 0.7


def test_difficulty_widens_the_scanner_variation():
    def noise_and_scale(difficulty):
        rel_noise, gains = [], []
        for seed in range(12):
            v = synthesize_patient(np.random.default_rng([seed, 3]), "LGG", SMALL, difficulty)
            t2 = v["t2"][(v["t2"] > 0) & (v["seg"] == 0)].astype(np.float64)
            gains.append(np.median(t2))
            rel_noise.append(np.std(np.diff(t2)) / np.median(t2))  # voxel-to-voxel jitter ~ noise
        return np.ptp(rel_noise), np.max(gains) / np.min(gains)

    easy_noise, easy_gain = noise_and_scale(0.0)
    hard_noise, hard_gain = noise_and_scale(1.0)
    assert hard_noise > easy_noise and hard_gain > easy_gain


def test_a_hard_cohort_from_another_generator_version_is_refused(tmp_path: Path):
    made = generate_cohort(tmp_path / "hard", patients=2, shape=TINY, difficulty=0.3)
    recorded = generation_settings(made)
    assert recorded["generator"] == GENERATOR_VERSION
    wanted = {**DEFAULTS, "patients": 2, "shape": list(TINY), "difficulty": 0.3}
    assert settings_mismatch(recorded, wanted) is None
    old = {**recorded, "generator": 1}
    problem = settings_mismatch(old, wanted)
    assert problem == (
        f"holds a synthetic cohort drawn by generator version 1, whose voxels at difficulty > 0 differ "
        f"from this version's ({GENERATOR_VERSION}): delete that folder to generate it again, or set "
        "data.root elsewhere"
    )
    # A record without a version is version 1; at difficulty 0 every version draws the same voxels.
    unversioned = {k: v for k, v in recorded.items() if k != "generator"}
    assert settings_mismatch(unversioned, wanted) == problem
    assert settings_mismatch({**unversioned, "difficulty": 0.0}, {**wanted, "difficulty": 0.0}) is None
    (made / ".synthetic.json").write_text(json.dumps(unversioned))
    with pytest.raises(ConfigError, match="generator version 1"):
        synthetic.ensure_cohort(made, wanted, progress=False)


MEDIUM = (120, 120, 64)


def mimic_cases(difficulty: float, n: int = 16):
    """(grade, volumes, tissue map) of ``n`` MEDIUM patients of each grade."""
    for seed in range(n):
        for grade in ("HGG", "LGG"):
            rng = np.random.default_rng([seed, 11])
            volumes, tissue = anatomy._synthesize(rng, grade, MEDIUM, with_tissue=True, difficulty=difficulty)
            yield grade, volumes, tissue


def test_mimic_lesions_lie_outside_the_tumour_and_its_crop_and_ignore_the_grade():
    """At difficulty > 0 both grades get unlabelled lesions that enhance like a high-grade rim, on
    the tumour's axial slices but in the other hemisphere, mostly outside a tumour-centred crop
    (64 pixels here, as 128 is at 240)."""
    with_mimic = {"HGG": 0, "LGG": 0}
    inside_crop, total, bright = 0, 0, []
    for grade, volumes, tissue in mimic_cases(0.3):
        mimic, seg, t1ce = tissue == MIMIC_TISSUE, volumes["seg"], volumes["t1ce"]
        if not mimic.any():
            continue
        with_mimic[grade] += 1
        assert not (seg[mimic] > 0).any()  # never in the mask
        tumour_z = np.nonzero((seg > 0).any(axis=(0, 1)))[0]
        mimic_z = np.nonzero(mimic.any(axis=(0, 1)))[0]
        assert np.intersect1d(tumour_z, mimic_z).size > 0  # seen on the tumour's slices
        z = int(np.argmax((seg > 0).sum(axis=(0, 1))))
        xs, ys = np.nonzero(seg[:, :, z])
        cx, cy = (xs.min() + xs.max()) // 2, (ys.min() + ys.max()) // 2
        plane = mimic[:, :, z]
        inside_crop += int(plane[max(cx - 32, 0) : cx + 32, max(cy - 32, 0) : cy + 32].sum())
        total += int(plane.sum())
        bright.append(np.percentile(t1ce[mimic], 99) / np.median(t1ce[tissue == 3]))
    # Chance 1 - (1 - 0.625)^2 = 0.86 per patient, whatever the grade.
    assert 10 <= with_mimic["HGG"] <= 16 and 10 <= with_mimic["LGG"] <= 16
    assert total > 0 and inside_crop / total < 0.25
    assert np.median(bright) > 1.4  # as bright as an enhancing rim


def test_no_mimics_at_difficulty_zero():
    assert not any((tissue == MIMIC_TISSUE).any() for _, _, tissue in mimic_cases(0.0, n=4))

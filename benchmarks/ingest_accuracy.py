"""How well hospital-like scans come back to the model's space.

Synthetic BraTS-space patients (``synthesize_patient``) are turned into scanner-space series by
``scanner_images`` (head with skull, random pose, clinical series geometry), brought back by
``to_model_space`` and checked by ``check_quality``. Per patient: the brain mask's Dice against
the original's brain, NCC inside the brain per modality, whether QC passed, and the seconds of
``to_model_space`` + ``check_quality``. Hostile cases: one series taken from another patient,
one series flipped left-right in its header; each must fail QC.

The template places a brain where the mean brain is; a patient's brain sits in its original
file up to about 5 mm from there (the generator's random brain centre), a placement no image
can reveal, and a 1 mm shift alone takes the NCC of these noisy volumes from 1 to about 0.85.
So besides the raw figures against the original (``dice_raw``, ``ncc_raw_*``), the original is
moved by the rigid transform that the ingestion's placement of the reference series amounts to
(ingested point -> reference series point -> original point, from the generator's truth)
before Dice and NCC are taken (``dice``, ``ncc_*``): what remains is every other error (the
other series' registration, resampling, bias correction, the brain mask). ``placement_mm`` is
the mean distance, over the brain, between where the ingestion put an original voxel and where
it was.

    python -m benchmarks.ingest_accuracy --patients 10 --out ingest_accuracy.csv
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from gliograde.data.synthetic.generator import brats_affine, synthesize_patient
from gliograde.ingest.hospital_scans import flip_left_right, model_grid_image, scanner_images
from gliograde.ingest.model_space import to_model_space
from gliograde.ingest.quality import check_quality
from gliograde.ingest.template import Template, build_template, load_template, save_template

MODALITIES = ("flair", "t1", "t1ce", "t2")
FULL_SHAPE = (240, 240, 155)


def model_space_patient(seed: int, grade: str, shape=FULL_SHAPE) -> dict[str, sitk.Image]:
    """A synthetic patient as SimpleITK reads its BraTS files (float32)."""
    arrays = synthesize_patient(np.random.default_rng(seed), grade, shape)
    return {m: model_grid_image(arrays[m], brats_affine(shape)) for m in MODALITIES}


def synthetic_template(folder: Path, patients: int = 8, seed: int = 1000, shape=FULL_SHAPE) -> Template:
    """The template of ``patients`` synthetic patients (seeds from ``seed``), saved in
    ``folder`` (loaded from there when present)."""
    folder = Path(folder)
    if (folder / "template.json").is_file():
        return load_template(folder)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(patients):
            volumes = model_space_patient(seed + i, ("LGG", "HGG")[i % 2], shape)
            paths = {}
            for m, image in volumes.items():
                paths[m] = Path(tmp) / f"P{i:03d}" / f"P{i:03d}_{m}.nii.gz"
                paths[m].parent.mkdir(exist_ok=True)
                sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(paths[m]))
            files.append(paths)
        template = build_template(files, MODALITIES)
    save_template(template, folder)
    return template


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def measure(original: dict[str, sitk.Image], ingested, truth: dict) -> dict:
    """Raw and placement-aligned Dice and NCC of ``ingested`` against ``original``."""
    row: dict = {}
    brain_raw = sitk.GetArrayViewFromImage(original["t1"]) > 0
    for m in MODALITIES:
        brain_raw = brain_raw | (sitk.GetArrayViewFromImage(original[m]) > 0)
    got = sitk.GetArrayViewFromImage(ingested.brain) > 0
    row["dice_raw"] = dice(got, brain_raw)
    both = got & brain_raw  # NCC where both call it brain; Dice judges the masks
    for m in ingested.volumes:
        got_m = sitk.GetArrayViewFromImage(ingested.volumes[m])
        row[f"ncc_raw_{m}"] = ncc(sitk.GetArrayViewFromImage(original[m])[both], got_m[both])
    # Model point -> reference series point (ingestion) -> original point (the generator's truth).
    align = sitk.CompositeTransform(
        [truth["to_model"][ingested.reference], ingested.transforms[f"{ingested.reference}_to_template"]]
    )
    grid = ingested.brain
    moved = {
        m: sitk.Resample(original[m], grid, align, sitk.sitkLinear, 0.0, sitk.sitkFloat32) for m in original
    }
    brain = np.zeros(got.shape, bool)
    for m in MODALITIES:
        # Linear resampling blurs the edge: brain where at least half the tissue level remains.
        level = float(np.median(sitk.GetArrayViewFromImage(original[m])[brain_raw]))
        brain |= sitk.GetArrayViewFromImage(moved[m]) > 0.5 * level
    row["dice"] = dice(got, brain)
    both = got & brain
    for m in ingested.volumes:
        got_m = sitk.GetArrayViewFromImage(ingested.volumes[m])
        row[f"ncc_{m}"] = ncc(sitk.GetArrayViewFromImage(moved[m])[both], got_m[both])
    # Placement: where the ingestion put each original voxel vs where it was.
    points = np.argwhere(brain_raw)[::4000][:, ::-1]
    distances = [
        np.linalg.norm(np.subtract(align.TransformPoint(p), p))
        for p in (original["t1"].TransformIndexToPhysicalPoint([int(v) for v in idx]) for idx in points)
    ]
    row["placement_mm"] = float(np.mean(distances))
    return row


def run_patient(seed: int, grade: str, template: Template, *, replace=None) -> tuple[dict, object]:
    """Generate, scan, ingest and check one patient; ``replace`` (series, or a function of the
    series giving some) swaps series in: the hostile cases."""
    original = model_space_patient(seed, grade)
    scan = scanner_images(original, np.random.default_rng(seed + 7919))
    images = dict(scan.images)
    if replace:
        images.update(replace(images) if callable(replace) else replace)
    clock, cpu = time.perf_counter(), time.process_time()
    ingested = to_model_space(images, template)
    quality = check_quality(ingested, template)
    seconds, cpu = time.perf_counter() - clock, time.process_time() - cpu
    row = {"seed": seed, "grade": grade, **measure(original, ingested, scan.truth)}
    row.update({"qc_passed": quality.passed, "qc_failed": "; ".join(quality.failed)})
    row.update({"seconds": seconds, "cpu_s": cpu})
    row.update({k: round(v, 1) for k, v in ingested.scores["timings"].items()})
    row["qc_s"] = round(seconds - sum(ingested.scores["timings"].values()), 1)
    for r in quality.rows.itertuples():
        row[f"agreement_{r.modality}"] = r.agreement
        row[f"template_ncc_{r.modality}"] = r.template_ncc
        row[f"mirror_gain_{r.modality}"] = r.mirror_gain
    return row, scan


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hostile", type=int, default=2, help="patients also run with a foreign and a flipped series"
    )
    default_template = Path(tempfile.gettempdir()) / "gliograde_ingest_template"
    parser.add_argument("--template", type=Path, default=default_template)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    template = synthetic_template(args.template)
    rows = []
    for i in range(args.patients):
        seed, grade = args.seed + i, ("LGG", "HGG")[i % 2]
        row, _ = run_patient(seed, grade, template)
        rows.append({"case": "good", **row})
        print(pd.DataFrame([rows[-1]]).round(3).to_string(index=False), flush=True)
        if i < args.hostile:
            other = scanner_images(model_space_patient(seed + 500, grade), np.random.default_rng(seed + 501))
            cases = {
                "other_patient_flair": {"flair": other.images["flair"]},
                "flipped_t2": lambda im: {"t2": flip_left_right(im["t2"])},
            }
            for case, replace in cases.items():
                row, _ = run_patient(seed, grade, template, replace=replace)
                rows.append({"case": case, **row})
                print(pd.DataFrame([rows[-1]]).round(3).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    columns = ["case", "seed", "grade", "dice_raw", "dice", *[f"ncc_{m}" for m in MODALITIES]]
    columns += ["placement_mm", "qc_passed", "seconds", "cpu_s", "qc_failed"]
    print(table[columns].round(3).to_string(index=False))
    return table


if __name__ == "__main__":
    main()

"""Does a model grade a patient's hospital scans as it grades the patient's model-space files?

From a BraTS-layout cohort that a run was not trained on, ``--patients`` patients are written as
hospital-like scans (``python -m gliograde.ingest.hospital_cohort``: skull, head pose, motion,
hospital grids, half DICOM, half NIfTI), ingested into the run's space
(``python -m gliograde.ingest``), and graded by ``predict.py`` with the same model and the same
slice rule (the segmenter's predicted tumour on both sides: the originals' masks are hidden).
Two hostile copies are ingested too: one NIfTI patient whose FLAIR is another patient's, and one
whose FLAIR is flipped left-right in its header; both must fail the quality check.

    python -m benchmarks.ingest_agreement --cohort COHORT --run RUN --segmenter SEG --patients 20 --work DIR

Prints per patient the probability from the originals and from the ingested scans, the
difference, the quality check and the seconds of ingestion, then the summary figures.

A control that involves no ingestion: the originals blurred by a Gaussian of ``--blur`` voxels
(about what resampling onto a rotated grid does to fine texture) and graded again
(``p_blurred``). A model whose calls move under that blur alone will disagree with itself on
ingested scans however well they are registered; train it with ``data.augment.blur_sigma``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("flair", "t1", "t1ce", "t2")
WITHIN = 0.10
BLUR_VOXELS = 0.6


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _originals_without_masks(cohort: Path, patients: list[str], into: Path) -> Path:
    """Links to the patients' model-space volumes, without their tumour masks."""
    for patient in patients:
        folder = into / patient
        folder.mkdir(parents=True, exist_ok=True)
        for modality in MODALITIES:
            source = next((cohort / patient).glob(f"{patient}_{modality}.nii*"))
            (folder / source.name).symlink_to(source.resolve())
    return into


def _blurred_copies(originals: Path, sigma: float, into: Path) -> Path:
    """The originals with a Gaussian blur of ``sigma`` voxels inside the brain (the air stays 0)."""
    from scipy.ndimage import gaussian_filter

    for folder in sorted(p for p in originals.iterdir() if p.is_dir()):
        (into / folder.name).mkdir(parents=True, exist_ok=True)
        for source in folder.glob("*.nii*"):
            image = nib.load(str(source))
            voxels = np.asarray(image.dataobj, dtype=np.float32)
            blurred = np.where(voxels > 0, gaussian_filter(voxels, sigma), 0).astype(np.float32)
            nib.save(nib.Nifti1Image(blurred, image.affine), str(into / folder.name / source.name))
    return into


def _hostile_copies(scans: Path, truth: pd.DataFrame, into: Path) -> dict[str, str]:
    """Two NIfTI patients: one with another patient's FLAIR, one with its FLAIR mirrored in the header."""
    nifti = truth[truth["written_as"] == "nifti"]["patient_id"].tolist()
    swapped, flipped, donor = nifti[0], nifti[1], nifti[2]
    for patient in (swapped, flipped):
        shutil.copytree(scans / patient, into / patient)
    shutil.copyfile(scans / donor / "ax_flair_5mm.nii.gz", into / swapped / "ax_flair_5mm.nii.gz")
    path = into / flipped / "ax_flair_5mm.nii.gz"
    image = nib.load(str(path))
    axis = int(np.argmax(np.abs(image.affine[0, :3])))  # the voxel axis closest to left-right
    # the voxels mirrored, the header kept: left and right are swapped in what the header says
    nib.save(nib.Nifti1Image(np.flip(np.asarray(image.dataobj), axis).copy(), image.affine), str(path))
    return {swapped: "FLAIR of another patient", flipped: "FLAIR flipped left-right in its header"}


def _discrimination(cohort: Path, table: pd.DataFrame, positive: str) -> dict[str, float]:
    """Patient AUROC of each probability column against the cohort's grades (its label table),
    or nothing when the cohort has no labels or only one grade among the patients."""
    from sklearn.metrics import roc_auc_score

    from gliograde.data.discovery.labels import read_label_table
    from gliograde.data.discovery.specs import LabelSpec

    spec = LabelSpec()
    path = cohort / str(spec.file)
    if not path.is_file():
        return {}
    grades = read_label_table(path, spec)
    truth = pd.Series({p: grades.get(p) for p in table.index}) == positive.removeprefix("prob_")
    if truth.nunique() < 2:
        return {}
    columns = [c for c in ("p_originals", "p_ingested", "p_blurred") if c in table]
    return {c.removeprefix("p_"): float(roc_auc_score(truth, table[c])) for c in columns}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest_agreement", description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True, help="BraTS-layout cohort the run did not train on")
    parser.add_argument("--run", type=Path, required=True, help="a classifier run (its template is built from it)")
    parser.add_argument("--segmenter", type=Path, required=True, help="a segmenter run (task=segment)")
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--work", type=Path, required=True, help="a new folder for everything written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blur", type=float, default=BLUR_VOXELS, help="the control's blur, in voxels (0: none)")
    args = parser.parse_args(argv)
    work = args.work
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} exists and is not empty")
    patients = sorted(p.name for p in args.cohort.iterdir() if p.is_dir())[: args.patients]
    picked = work / "picked"
    for patient in patients:
        (picked).mkdir(parents=True, exist_ok=True)
        (picked / patient).symlink_to((args.cohort / patient).resolve())
    scans = work / "scans"
    _run("-m", "gliograde.ingest.hospital_cohort", str(picked), str(scans), "--seed", str(args.seed))
    truth = pd.read_csv(scans / "truth.csv")
    _run("-m", "gliograde.ingest", str(scans), str(work / "ingested"), f"model={args.run}")
    ingested = pd.read_csv(work / "ingested" / "ingest.csv").set_index("patient_id")
    predict = ["predict.py", f"ckpt={args.run}", f"segmenter={args.segmenter}", "gradcam=false", "min_tumour_ml=0"]
    _run(*predict, f"input={work / 'ingested'}", "qc=warn", f"output_dir={work / 'predict_ingested'}")
    originals = _originals_without_masks(args.cohort, patients, work / "originals")
    _run(*predict, f"input={originals}", f"output_dir={work / 'predict_originals'}")
    if args.blur > 0:
        blurred = _blurred_copies(originals, args.blur, work / "blurred")
        _run(*predict, f"input={blurred}", f"output_dir={work / 'predict_blurred'}")
    hostile = _hostile_copies(scans, truth, work / "hostile")
    _run("-m", "gliograde.ingest", str(work / "hostile"), str(work / "hostile_ingested"), f"model={args.run}")
    caught = pd.read_csv(work / "hostile_ingested" / "ingest.csv").set_index("patient_id")

    mine = pd.read_csv(work / "predict_ingested" / "predictions.csv").set_index("patient_id")
    theirs = pd.read_csv(work / "predict_originals" / "predictions.csv").set_index("patient_id")
    second = [c for c in theirs.columns if c.startswith("prob_")][-1]
    table = pd.DataFrame(
        {
            "written_as": truth.set_index("patient_id")["written_as"],
            "p_originals": theirs[second],
            "p_ingested": mine[second],
            "qc": ingested["qc"],
            "ingest_s": ingested["seconds"],
        }
    ).loc[patients]
    table["difference"] = (table["p_ingested"] - table["p_originals"]).abs()
    if args.blur > 0:
        control = pd.read_csv(work / "predict_blurred" / "predictions.csv").set_index("patient_id")
        table["p_blurred"] = control[second].loc[patients]
        table["blur_difference"] = (table["p_blurred"] - table["p_originals"]).abs()
    pd.set_option("display.width", 200)
    print(table.round(3).to_string())
    within = float((table["difference"] <= WITHIN).mean())
    print(
        f"\n{len(table)} patients: |p ingested - p originals| <= {WITHIN} for {within:.0%} "
        f"(median {table['difference'].median():.3f}, largest {table['difference'].max():.3f}); "
        f"quality check passed {int((table['qc'] == 'passed').sum())}/{len(table)}; "
        f"ingestion {table['ingest_s'].median():.1f} s per patient (median, max {table['ingest_s'].max():.1f})"
    )
    auroc = _discrimination(args.cohort, table, second)
    if auroc:
        # Agreement alone is no virtue: a model that gives every patient one call agrees with itself.
        print("patient AUROC against the cohort's grades: " + ", ".join(f"{k} {v:.2f}" for k, v in auroc.items()))
    if args.blur > 0:
        print(
            f"control, no ingestion: the originals blurred by {args.blur} voxels are within {WITHIN} for "
            f"{float((table['blur_difference'] <= WITHIN).mean()):.0%}"
        )
    for patient, what in hostile.items():
        print(f"hostile: {patient} ({what}): qc = {caught.loc[patient, 'qc']}")
    table.to_csv(work / "agreement.csv")


if __name__ == "__main__":
    main()

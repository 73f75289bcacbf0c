"""``python -m gliograde.ingest.hospital_cohort COHORT OUT [--seed S] [--patients N] [--dicom-fraction F]``

A cohort of hospital-like scans from a BraTS-layout cohort: every patient's volumes with
skull, a head pose, motion between series and hospital acquisition grids (see
:mod:`gliograde.ingest.hospital_scans`), half written as DICOM series with vendor-like
descriptions (and a localiser to leave out), half as RAS NIfTI files with hospital names."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk

from gliograde.data.errors import DataError
from gliograde.data.discovery.specs import MODALITIES
from gliograde.ingest.dicom_write import write_dicom_series
from gliograde.ingest.hospital_scans import scanner_images

TRUTH_FILE = "truth.csv"
# How a scanner's console names each series, and the file names a hospital's NIfTI export uses.
SERIES_DESCRIPTIONS = {
    "flair": "AX T2 FLAIR 5mm",
    "t1": "SAG 3D T1 MPRAGE",
    "t1ce": "AX T1 MPRAGE POST GD",
    "t2": "AX T2 TSE",
}
NIFTI_NAMES = {
    "flair": "ax_flair_5mm.nii.gz",
    "t1": "sag_3d_t1.nii.gz",
    "t1ce": "ax_t1_post_gd.nii.gz",
    "t2": "ax_t2_tse.nii.gz",
}


def write_hospital_cohort(
    cohort: Path, out: Path, seed: int = 0, patients: int | None = None, dicom_fraction: float = 0.5
) -> pd.DataFrame:
    """Write hospital-like scans of the patients of the BraTS-layout ``cohort`` into ``out``
    (one top folder per patient) and ``out/truth.csv`` (the pose and series drawn); return that table.

    The first ``dicom_fraction`` of the patients (sorted by id) are written as DICOM, the rest
    as NIfTI; ``patients`` takes only the first N.
    """
    folders = sorted(p for p in cohort.iterdir() if p.is_dir() and any(p.glob(f"{p.name}_flair.nii*")))
    if not folders:
        raise DataError("no BraTS-layout patient folder ({id}/{id}_flair.nii.gz) inside", where=cohort)
    folders = folders[:patients] if patients else folders
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_dicom = int(round(dicom_fraction * len(folders)))
    rows = []
    for number, folder in enumerate(folders):
        patient = folder.name
        volumes = {m: _volume_file(folder, patient, m) for m in MODALITIES}
        scan = scanner_images(volumes, rng)
        as_dicom = number < n_dicom
        target = out / patient
        if as_dicom:
            _write_dicom(scan.images, target, patient, series_seed=seed * 100_003 + number)
        else:
            _write_nifti(scan.images, target)
        rows.append({"patient_id": patient, "written_as": "dicom" if as_dicom else "nifti", **_drawn(scan.truth)})
    table = pd.DataFrame(rows)
    table.to_csv(out / TRUTH_FILE, index=False)
    return table


def _drawn(truth: dict) -> dict[str, str | float]:
    """The head pose and gains drawn for one patient, as table cells."""
    pose = truth["pose"]
    return {
        "rotation_deg": json.dumps([round(float(np.degrees(a)), 3) for a in (pose.GetAngleX(), pose.GetAngleY(), pose.GetAngleZ())]),
        "shift_mm": json.dumps([round(float(t), 3) for t in pose.GetTranslation()]),
        "gain": json.dumps({m: round(float(g), 4) for m, g in truth["gain"].items()}),
    }


def _volume_file(folder: Path, patient: str, modality: str) -> Path:
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{patient}_{modality}{suffix}"
        if path.is_file():
            return path
    raise DataError(f"no {modality} volume", patient, folder)


def _write_dicom(images: dict[str, sitk.Image], folder: Path, patient: str, series_seed: int) -> None:
    """Each series in its own sub-folder (as a PACS export nests them), plus a localiser."""
    from pydicom.uid import generate_uid

    study = generate_uid(entropy_srcs=[patient, str(series_seed), "study"])
    for number, modality in enumerate(MODALITIES, start=2):
        write_dicom_series(
            images[modality],
            folder / f"{number:03d}_{modality}",
            patient_id=patient,
            series_description=SERIES_DESCRIPTIONS[modality],
            series_number=number,
            study_uid=study,
        )
    write_dicom_series(
        _localiser(images["t1ce"]),
        folder / "001_localizer",
        patient_id=patient,
        series_description="3-PLANE LOCALIZER",
        series_number=1,
        study_uid=study,
    )


def _localiser(image: sitk.Image) -> sitk.Image:
    """Three thick slices through the middle of ``image``: the scout a scanner takes first."""
    size = list(image.GetSize())
    middle = size[2] // 2
    return image[:, :, max(middle - 1, 0) : middle + 2]


def _write_nifti(images: dict[str, sitk.Image], folder: Path) -> None:
    """RAS+ NIfTI files (as many hospital converters write them) with hospital file names."""
    folder.mkdir(parents=True, exist_ok=True)
    for modality, image in images.items():
        path = folder / NIFTI_NAMES[modality]
        sitk.WriteImage(image, str(path), True)
        ras = nib.as_closest_canonical(nib.load(str(path)))
        nib.save(nib.Nifti1Image(np.asarray(ras.dataobj), ras.affine), str(path))


def hospital_names(modalities: Sequence[str] = MODALITIES) -> dict[str, str]:
    """The NIfTI file names the generator gives each modality."""
    return {m: NIFTI_NAMES[m] for m in modalities}


def main(argv: Sequence[str] | None = None) -> None:
    """The command line."""
    from gliograde.errors import exit_on_user_error

    parser = argparse.ArgumentParser(
        prog="python -m gliograde.ingest.hospital_cohort",
        description="Write hospital-like scans (skull, head pose, motion, hospital grids, DICOM or NIfTI) "
        "of a BraTS-layout cohort, with truth.csv of what was drawn.",
    )
    parser.add_argument("cohort", type=Path, help="a BraTS-layout cohort (python -m gliograde.synthetic writes one)")
    parser.add_argument("out", type=Path, help="a new folder for the hospital scans")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patients", type=int, default=None, help="only the first N patients")
    parser.add_argument("--dicom-fraction", type=float, default=0.5, help="share written as DICOM (default 0.5)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.out.exists() and any(args.out.iterdir()):
            raise DataError("exists and is not empty: give a new folder", where=args.out)
        table = write_hospital_cohort(args.cohort, args.out, args.seed, args.patients, args.dicom_fraction)
    counts = table["written_as"].value_counts().to_dict()
    print(f"Wrote {len(table)} patient(s) to {args.out} ({counts}); what was drawn: {args.out / TRUTH_FILE}")


if __name__ == "__main__":
    main()

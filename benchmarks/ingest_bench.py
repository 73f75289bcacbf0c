"""Ingestion's cost for ``benchmarks.bench``: ``python -m gliograde.ingest`` on one hospital-like
DICOM patient (four series with skull, a head pose and hospital grids, and a localiser), start-up,
DICOM reading, N4, registrations, resampling, quality check and writing included.

The template is built from the bench's small cohort, the model is predict's one-step checkpoint:
what ingestion costs depends on neither's quality.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

INGEST_MAX_S = 60.0


def measure_ingest(root: Path, classifier: Path, work: Path, repeats: int, seed: int, repo: Path) -> float:
    """Median wall seconds of ingesting one DICOM patient made from the first patient of ``root``."""
    from gliograde.ingest.hospital_cohort import write_hospital_cohort
    from gliograde.ingest.template import build_template, save_template

    folders = sorted(p for p in root.iterdir() if p.is_dir())
    patients = [{m: next(f.glob(f"{f.name}_{m}.nii*")) for m in ("flair", "t1", "t1ce", "t2")} for f in folders]
    template = work / "ingest-template"
    save_template(build_template(patients, ("flair", "t1", "t1ce", "t2")), template)
    one = work / "ingest-one"
    shutil.rmtree(one, ignore_errors=True)
    one.mkdir(parents=True)
    (one / folders[0].name).symlink_to(folders[0])
    scans = work / "ingest-scans"
    shutil.rmtree(scans, ignore_errors=True)
    write_hospital_cohort(one, scans, seed=seed, dicom_fraction=1.0)
    out = work / "ingest-out"
    command = [
        sys.executable, "-m", "gliograde.ingest", str(scans), str(out), f"model={classifier}",
        f"ingest.template={template}",
    ]  # fmt: skip
    times = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"python -m gliograde.ingest failed:\n{done.stderr[-2000:]}")
    return sorted(times)[len(times) // 2]

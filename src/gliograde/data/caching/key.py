"""A cache's key: the hash of its inputs' identities and of the settings that change its voxels (its
generation), and of what it keeps of them; the dtype it stores."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from gliograde.data.caching.cache_box import BOX_MARGIN, SlabRule
from gliograde.data.caching.cache_meta import CACHE_FORMAT
from gliograde.data.caching.preprocess import stored_modalities
from gliograde.data.discovery.patient_files import PatientRecord
from gliograde.data.discovery.specs import PreprocessSpec


CACHE_DTYPE = np.float16


def cohort_root(patients: list[PatientRecord]) -> Path:
    """The folder holding the patient folders (their deepest common parent), unresolved."""
    parents = [os.path.abspath(record.folder.parent) for record in patients]
    return Path(os.path.commonpath(parents))


def stored_of(patients: list[PatientRecord]) -> tuple[str, ...]:
    """The modalities a cache of ``patients`` stores: the ones every record has (all the same)."""
    stored = stored_modalities(patients[0].modalities)
    for record in patients:
        if stored_modalities(record.modalities) != stored:
            raise ValueError(
                f"patient {record.patient_id} has modalities {list(record.modalities)}, not {list(stored)}"
            )
    return stored


def cache_key(
    patients: list[PatientRecord],
    spec: PreprocessSpec,
    mask_labels: tuple[int, ...],
    box_margin: int | None = BOX_MARGIN,
    slab: SlabRule = SlabRule(),
) -> str:
    """Hash of the cache's generation (its inputs and the settings that change voxels, see
    ``cache_generation``) and of what it keeps of them (the block margin and the slab)."""
    settings = {
        "generation": cache_generation(patients, spec, mask_labels),
        "box_margin": box_margin,
        "slab": slab.settings() if box_margin is not None else None,  # the full grid holds every slice
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def cache_generation(
    patients: list[PatientRecord], spec: PreprocessSpec, mask_labels: tuple[int, ...]
) -> str:
    """Hash of every input file's identity and stat, and of the settings that change voxels:
    caches of one generation differ only in which slices and block of them they keep.

    Size and mtime alone miss a file rewritten in place with its mtime put back; the ctime
    (which ``os.utime`` cannot set) and the inode (new for a replaced file) catch it.
    """
    stored = stored_of(patients)
    digest = hashlib.sha256()
    settings = {
        "format": CACHE_FORMAT,
        "modalities": list(stored),
        "clip_percentiles": list(spec.clip_percentiles) if spec.clip_percentiles else None,
        "reorient": spec.reorient,
        "mask_labels": list(mask_labels),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for record in sorted(patients, key=lambda r: r.patient_id):
        digest.update(record.patient_id.encode())
        for path in [record.modalities[m] for m in stored] + [record.mask]:
            if path is None:
                digest.update(b"-")
                continue
            st = path.stat()
            identity = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)
            digest.update("|".join(map(str, (path.resolve(), *identity))).encode())
    return digest.hexdigest()[:20]

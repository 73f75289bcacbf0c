"""The mask store: each usable patient's whole-tumour mask as uint8 rows aligned with the
cache's rows (same slots, slab and block as ``volumes.npy``), so reading the mask of a
(slot, slice) is the index arithmetic of ``SliceDataset._read_axial``.

It lives beside the cache, in ``<cache_dir>/masks-<cache key>/`` (``masks.npy`` and
``meta.json``); the meta records the layout, the mask labels and every mask file's size and
mtime, and a store whose meta differs from the cohort's is rebuilt (built in a hidden
sibling, then renamed into place).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from gliograde.data.caching.cache_box import BoxLayout
from gliograde.data.discovery.nifti import read_voxels
from gliograde.errors import GliogradeError

log = logging.getLogger(__name__)

MASKS_FILE = "masks.npy"
META_FILE = "meta.json"
STORE_FORMAT = 1


class MaskStoreError(GliogradeError):
    """The mask store cannot be built or read."""


@dataclass(frozen=True)
class MaskStore:
    """An opened mask store: ``masks.npy`` is ``[row, block_y, block_x]`` uint8 (1: tumour)."""

    directory: Path
    layout: BoxLayout

    @property
    def path(self) -> Path:
        return self.directory / MASKS_FILE

    def rows(self) -> np.ndarray:
        """The stored rows, memory-mapped."""
        return np.asarray(np.load(self.path, mmap_mode="r"))

    def read(self, slots: np.ndarray, slices: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Axial masks ``[B, H, W]`` uint8 of (slot, slice) pairs on the full grid; a slice
        outside a slot's stored slab (no brain there) is all background."""
        stored = self.rows() if rows is None else rows
        layout = self.layout
        _, height, width = layout.grid
        (by, bx) = layout.block
        slots = np.asarray(slots, dtype=np.int64)
        out = np.zeros((len(slots), height, width), dtype=np.uint8)
        first, origin, depth = layout.first_row[slots], layout.origin[slots], layout.depth[slots]
        local = np.asarray(slices, dtype=np.int64) - origin[:, 0]
        for b in np.flatnonzero((local >= 0) & (local < depth)):
            y0, x0 = int(origin[b, 1]), int(origin[b, 2])
            out[b, y0 : y0 + by, x0 : x0 + bx] = stored[first[b] + local[b]]
        return out

    def volume(self, slot: int) -> np.ndarray:
        """Patient ``slot``'s whole-tumour mask, bool ``[z, y, x]`` on the full grid."""
        depth = self.layout.grid[0]
        return self.read(np.full(depth, slot), np.arange(depth)).astype(bool)


def store_directory(cache_directory: Path) -> Path:
    """Where the mask store of the cache at ``cache_directory`` lives."""
    return cache_directory.parent / f"masks-{cache_directory.name}"


def whole_tumour(seg: np.ndarray, mask_labels: Sequence[int]) -> np.ndarray:
    """Bool mask of every voxel carrying a nonzero label of ``mask_labels``."""
    return np.isin(seg, [int(label) for label in mask_labels if int(label) != 0])


def open_or_build_masks(prepared: Any) -> MaskStore:
    """The mask store of a loaded ``PreparedCohort`` (``.cohort`` and ``.cached`` set), built or
    rebuilt when missing or stale. Raises MaskStoreError for a patient without a mask file and
    for a store that must be (re)built in a place that cannot be written."""
    cohort, cached = prepared.cohort, prepared.cached
    records = {r.patient_id: r for r in cohort.patients}
    mask_labels = [int(v) for v in prepared.options.layout.mask_labels]
    reorient = prepared.options.preprocess_spec.reorient
    patients = []
    for position, patient in enumerate(cached.patient_ids):
        record = records[patient]
        if record.mask is None:
            raise MaskStoreError(
                f"{patient}: no tumour mask file {record.folder / prepared.options.layout.mask_file.format(id=patient)} "
                "(.nii or .nii.gz) found; a segmenter learns from masks: "
                "add it or remove the patient from the cohort"
            )
        patients.append((patient, int(cached.slots[position]), Path(record.mask)))
    layout = cached.layout
    meta = _meta(cached.directory.name, layout, mask_labels, reorient, patients)
    directory = store_directory(cached.directory)
    if _current(directory, meta):
        return MaskStore(directory, layout)
    if not _is_writable(directory.parent):
        why = "stale" if directory.exists() else "missing"
        raise MaskStoreError(
            f"{directory}: the tumour mask store is {why} and {directory.parent} is read-only; "
            "train once where the cache directory can be written, or point data.cache_dir at a writable place"
        )
    # One builder at a time (parallel sweep jobs, DDP ranks): the others wait, then find it current.
    with FileLock(str(directory.parent / f".{directory.name}.lock")):
        if not _current(directory, meta):
            log.info("Building the tumour mask store %s (%d patients)", directory, len(patients))
            _build(directory, layout, mask_labels, reorient, patients, meta)
    return MaskStore(directory, layout)


def _is_writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK)


def _meta(
    key: str,
    layout: BoxLayout,
    mask_labels: list[int],
    reorient: str | None,
    patients: list[tuple[str, int, Path]],
) -> dict[str, Any]:
    files = {}
    for patient, slot, path in patients:
        stat = path.stat()
        files[patient] = {
            "slot": slot,
            "path": str(path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
    return {
        "format": STORE_FORMAT,
        "cache_key": key,
        "layout": {
            "grid": list(layout.grid),
            "block": list(layout.block),
            "origin": layout.origin.tolist(),
            "depth": layout.depth.tolist(),
            "slab": layout.slab,
        },
        "mask_labels": mask_labels,
        "reorient": reorient,
        "masks": files,
    }


def _current(directory: Path, meta: dict[str, Any]) -> bool:
    """Whether the store at ``directory`` is whole and was built from the files ``meta`` names."""
    try:
        stored = json.loads((directory / META_FILE).read_text())
        header_ok = np.load(directory / MASKS_FILE, mmap_mode="r").shape[0] == sum(meta["layout"]["depth"])
    except (OSError, ValueError):
        return False
    return header_ok and stored == meta


def _build(
    directory: Path,
    layout: BoxLayout,
    mask_labels: list[int],
    reorient: str | None,
    patients: list[tuple[str, int, Path]],
    meta: dict[str, Any],
) -> None:
    staging = directory.parent / f".{directory.name}.building-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        (by, bx) = layout.block
        rows = np.lib.format.open_memmap(
            staging / MASKS_FILE, mode="w+", dtype=np.uint8, shape=(layout.rows, by, bx)
        )
        first = layout.first_row
        for patient, slot, path in patients:
            seg = read_voxels(path, patient, reorient).T  # (z, y, x), as preprocessing reads it
            tumour = whole_tumour(seg, mask_labels)
            stored = layout.crop(slot, tumour[:, None])[:, 0]
            lost = int(tumour.sum()) - int(stored.sum())
            if lost:
                log.warning(
                    "%s: %d tumour voxels lie outside the cached brain box and are left out", patient, lost
                )
            rows[first[slot] : first[slot] + layout.depth[slot]] = stored
        rows.flush()
        del rows
        (staging / META_FILE).write_text(json.dumps(meta) + "\n")
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, old)
        os.replace(staging, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

"""Building a cache: every header checked first, then each patient decoded and preprocessed (in
worker processes), volumes.npy written block by block with its index and problems.csv, and meta.json
sealing it."""

from __future__ import annotations

import io
import logging
import os
import shutil
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, wait
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gliograde.data.caching.cache_box import Bounds, BoxLayout, SlabRule
from gliograde.data.caching.cache_clean import partial_path
from gliograde.data.caching.cache_meta import Block, crc32_block, write_meta
from gliograde.data.caching.key import CACHE_DTYPE, cache_generation, cohort_root, stored_of
from gliograde.data.caching.preprocess import SliceAreas, preprocess_patient
from gliograde.data.caching.problems import write_problems
from gliograde.data.caching.workers import available_cores, signals_deferred, sigterm_as_exit, worker_pool
from gliograde.data.discovery.patient_files import PatientRecord
from gliograde.data.discovery.nifti import VolumeHeader, check_same_grid, read_header
from gliograde.data.discovery.specs import PLANES, PreprocessSpec
from gliograde.data.errors import DataError

log = logging.getLogger(__name__)


def _build(
    patients: list[PatientRecord],
    cache_dir: Path,
    key: str,
    spec: PreprocessSpec,
    mask_labels: tuple[int, ...],
    on_error: str,
    progress: bool,
    box_margin: int | None,
    slab: SlabRule,
) -> None:
    good, problems, shape = _check_headers(patients, on_error, spec.reorient)
    if not good:
        raise DataError(f"every patient failed a check; first: {problems[0]}", where=cache_dir)
    # Before decoding the boxes are unknown: the build needs at most the full grid.
    x, y, z = shape
    channels = len(stored_of(good))
    _check_free_space(cache_dir, len(good) * z * channels * y * x * np.dtype(CACHE_DTYPE).itemsize)
    tmp = partial_path(cache_dir, key)
    with sigterm_as_exit():
        tmp.mkdir()
        try:
            kept, areas, layout, blocks = _write_volumes(
                tmp, good, problems, shape, spec, mask_labels, on_error, progress, box_margin, slab
            )
            _write_index(tmp / "index.npz", kept, areas, shape, layout)
            write_problems(tmp / "problems.csv", problems)
            meta = {
                "key": key,
                "generation": cache_generation(patients, spec, mask_labels),
                "cohort_root": str(cohort_root(patients)),
                "patients": len(kept),
                "skipped": len(problems),
                "shape_xyz": list(shape),
                "modalities": list(stored_of(good)),
                "box": {"margin": box_margin, "block_yx": list(layout.block), "rows": layout.rows},
                "slab": slab.settings() if box_margin is not None else None,
                "dtype": np.dtype(CACHE_DTYPE).name,
                "clip_percentiles": spec.clip_percentiles,
                "reorient": spec.reorient,
                "mask_labels": list(mask_labels),
            }
            write_meta(tmp, meta, blocks)
            os.replace(tmp, cache_dir / key)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if not isinstance(exc, Exception):  # Ctrl-C or SIGTERM
                log.warning("Cache build interrupted; removed its partial files %s", tmp)
            raise


def _write_volumes(
    tmp: Path,
    good: list[PatientRecord],
    problems: list[DataError],
    shape: tuple[int, int, int],
    spec: PreprocessSpec,
    mask_labels: tuple[int, ...],
    on_error: str,
    progress: bool,
    box_margin: int | None,
    slab: SlabRule,
) -> tuple[list[tuple[int, PatientRecord]], dict[int, SliceAreas], BoxLayout, list[Block]]:
    """Decode every patient into ``tmp/volumes.npy``; return the (slot, patient) pairs kept,
    their areas by slot, the box layout, and the crc32 of each block written (the header, then
    each patient's slices).

    The layout's block needs every patient's brain box, known only once all are decoded:
    workers save each patient's stored slices, cut to its brain box, in ``tmp/blocks/``,
    which are then copied into ``volumes.npy`` and removed.
    """
    x, y, z = shape
    channels = len(stored_of(good))
    saved = tmp / "blocks"
    saved.mkdir()
    rule = slab if box_margin is not None else SlabRule("brain", z)  # the full grid: every slice
    outcomes, decode_problems = _preprocess_all(
        good, saved, (z, channels, y, x), spec, mask_labels, on_error, progress, rule
    )
    problems += decode_problems
    decoded = sorted(outcomes)
    if not decoded:
        raise DataError(f"every patient failed a check; first: {problems[0]}", where=tmp.parent)
    areas = {old: outcomes[old][0] for old in decoded}
    layout = BoxLayout.around([outcomes[old][1] for old in decoded], (z, y, x), box_margin, slab.kind)
    by, bx = layout.block
    _check_free_space(tmp.parent, layout.rows * channels * by * bx * np.dtype(CACHE_DTYPE).itemsize)
    # Written in row order with plain writes: faulting in a fresh memory map costs more.
    rows = np.empty((int(layout.depth.max()), channels, by, bx), dtype=CACHE_DTYPE)
    header = {"descr": rows.dtype.str, "fortran_order": False, "shape": (layout.rows, *rows.shape[1:])}
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, header)
    blocks = [crc32_block(0, head.getbuffer(), "header")]
    offset = len(head.getbuffer())
    with open(tmp / "volumes.npy", "wb") as fh:
        fh.write(head.getbuffer())
        for slot, old in enumerate(decoded):
            start, stop = outcomes[old][2]
            origin = layout.origin[slot]
            (z0, y0, x0), (z1, y1, x1) = np.subtract(start, origin), np.subtract(stop, origin)
            patient = rows[: layout.depth[slot]]
            patient.fill(0)
            block_path = saved / f"{old}.npy"
            patient[z0:z1, :, y0:y1, x0:x1] = np.load(block_path, mmap_mode="r")
            fh.write(patient.data)
            blocks.append(crc32_block(offset, patient.data, good[old].patient_id))
            offset += patient.nbytes
            block_path.unlink()
    saved.rmdir()
    kept = [(slot, good[old]) for slot, old in enumerate(decoded)]
    return kept, {slot: areas[old] for slot, old in enumerate(decoded)}, layout, blocks


def _check_free_space(cache_dir: Path, needed: int) -> None:
    """Refuse to start a build the disk cannot hold: a full disk mid-build kills the workers."""
    free = shutil.disk_usage(cache_dir).free
    if free < needed * 1.02:
        raise DataError(
            f"not enough free disk space for the cache: needs {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free (set data.cache_dir to a larger disk)",
            where=cache_dir,
        )


def _check_headers(
    patients: list[PatientRecord], on_error: str, reorient: str | None
) -> tuple[list[PatientRecord], list[DataError], tuple[int, int, int]]:
    """Header checks for every file, before any decoding: cheap, and they fail early."""
    shapes: dict[str, tuple[int, int, int]] = {}
    problems: list[DataError] = []
    for record in patients:
        try:
            headers: dict[str, VolumeHeader] = {
                m: read_header(path, record.patient_id, reorient) for m, path in record.modalities.items()
            }
            if record.mask is not None:
                headers["mask"] = read_header(record.mask, record.patient_id, reorient)
            shapes[record.patient_id] = check_same_grid(headers, record.patient_id)
        except DataError as err:
            if on_error == "raise":
                raise
            problems.append(err)
    if not shapes:
        return [], problems, (0, 0, 0)
    cohort_shape, _ = Counter(shapes.values()).most_common(1)[0]
    good = []
    for record in patients:
        shape = shapes.get(record.patient_id)
        if shape is None:
            continue
        if shape != cohort_shape:
            err = DataError(
                f"shape {shape} differs from the cohort's {cohort_shape}",
                record.patient_id,
                next(iter(record.modalities.values())),
            )
            if on_error == "raise":
                raise err
            problems.append(err)
            continue
        good.append(record)
    return good, problems, cohort_shape


Decoded = tuple[SliceAreas, Bounds, Bounds]  # areas, stored slab x brain box, saved block


# Each worker process decodes into one zeroed full-grid buffer, re-zeroed after each patient:
# a fresh buffer per patient costs a page fault per 4 KB of brain.
_GRID: np.ndarray | None = None


def _zeroed_grid(grid: tuple[int, int, int, int]) -> np.ndarray:
    """This process's zeroed ``[z, channel, y, x]`` buffer of shape ``grid``."""
    global _GRID
    if _GRID is None or _GRID.shape != grid:
        _GRID = np.zeros(grid, dtype=CACHE_DTYPE)
    return _GRID


def _preprocess_slot(
    blocks: Path,
    grid: tuple[int, int, int, int],  # [z, channel, y, x]
    slot: int,
    record: PatientRecord,
    spec: PreprocessSpec,
    mask_labels: tuple[int, ...],
    slab: SlabRule,
) -> Decoded:
    """Preprocess one patient on the full grid; save the part of its brain box within its
    slab as ``blocks/<slot>.npy``. Returns its areas, its slab (slices) x brain box (rows,
    columns), and the bounds of the saved block."""
    out = _zeroed_grid(grid)
    try:
        areas = preprocess_patient(
            record.patient_id,
            record.modalities,
            record.mask,
            out,
            mask_labels,
            spec.clip_percentiles,
            spec.reorient,
            out_is_zero=True,  # only brain voxels are written, and only they are zeroed again
        )
    except BaseException:
        out[...] = 0
        raise
    (b0, y0, x0), (b1, y1, x1) = areas.box
    s0, s1 = slab.bounds(areas.brain["axial"], areas.tumour["axial"] if areas.tumour is not None else None)
    z0 = min(max(s0, b0), b1)
    z1 = max(min(s1, b1), z0)
    block = out[z0:z1, :, y0:y1, x0:x1]
    with open(blocks / f"{slot}.npy", "wb") as fh:
        header = {"descr": block.dtype.str, "fortran_order": False, "shape": block.shape}
        np.lib.format.write_array_header_1_0(fh, header)
        for brain_slice in block:  # one slice at a time: no block-sized copy
            fh.write(np.ascontiguousarray(brain_slice).data)
    out[b0:b1, :, y0:y1, x0:x1] = 0
    return areas, ((s0, y0, x0), (s1, y1, x1)), ((z0, y0, x0), (z1, y1, x1))


def _preprocess_all(
    good: list[PatientRecord],
    blocks: Path,
    grid: tuple[int, int, int, int],
    spec: PreprocessSpec,
    mask_labels: tuple[int, ...],
    on_error: str,
    progress: bool,
    slab: SlabRule,
) -> tuple[dict[int, Decoded], list[DataError]]:
    workers = min(spec.workers or available_cores(), len(good))
    areas: dict[int, Decoded] = {}
    problems: list[DataError] = []
    bar = tqdm(total=len(good), desc="Caching patients", unit="patient", disable=not progress)

    def record_outcome(slot: int, outcome: Decoded | DataError) -> None:
        if isinstance(outcome, DataError):
            if on_error == "raise":
                raise outcome
            problems.append(outcome)
        else:
            areas[slot] = outcome
        bar.update(1)

    try:
        if workers <= 1:
            for slot, record in enumerate(good):
                record_outcome(slot, _outcome(blocks, grid, slot, record, spec, mask_labels, slab))
        else:
            with worker_pool(workers) as pool:
                with signals_deferred():
                    futures = {
                        pool.submit(_outcome, blocks, grid, slot, record, spec, mask_labels, slab): slot
                        for slot, record in enumerate(good)
                    }
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION, timeout=0.5)
                    for future in done:
                        record_outcome(futures[future], future.result())
    finally:
        bar.close()
    return areas, problems


def _outcome(blocks, grid, slot, record, spec, mask_labels, slab) -> Decoded | DataError:
    """Preprocess one patient; any failure comes back as a DataError naming the patient."""
    try:
        return _preprocess_slot(blocks, grid, slot, record, spec, mask_labels, slab)
    except DataError as err:
        return err
    except (MemoryError, OSError) as exc:  # the machine, not the patient: stop everything
        raise RuntimeError(f"patient {record.patient_id}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        problem = f"cannot preprocess ({type(exc).__name__}: {exc})".replace("\n", " ")
        return DataError(problem, record.patient_id, record.folder)


def _write_index(
    path: Path, kept: list[tuple[int, PatientRecord]], areas: dict[int, SliceAreas], shape, layout: BoxLayout
) -> None:
    stored = stored_of([r for _, r in kept])
    arrays: dict[str, np.ndarray] = {
        "modalities": np.array(stored),
        "patient_ids": np.array([r.patient_id for _, r in kept]),
        "slots": np.array([slot for slot, _ in kept], dtype=np.int64),
        "shape": np.array(shape, dtype=np.int64),
        **layout.to_arrays(),
        "has_mask": np.array([areas[slot].tumour is not None for slot, _ in kept]),
    }
    for modality in stored:
        arrays[f"fingerprint_{modality}"] = np.array([areas[slot].fingerprints[modality] for slot, _ in kept])
        arrays[f"order_fingerprint_{modality}"] = np.array(
            [areas[slot].order_fingerprints[modality] for slot, _ in kept]
        )
    for plane in PLANES:
        arrays[f"brain_codes_{plane}"] = np.stack([areas[slot].brain_codes[plane] for slot, _ in kept])
        arrays[f"tumour_{plane}"] = np.stack(
            [
                areas[slot].tumour[plane]
                if areas[slot].tumour is not None
                else np.zeros(len(areas[slot].brain[plane]), dtype=np.int32)
                for slot, _ in kept
            ]
        )
    for plane in PLANES:
        arrays[f"brain_box_{plane}"] = np.stack([areas[slot].brain_boxes[plane] for slot, _ in kept])
        arrays[f"tumour_box_{plane}"] = np.stack(
            [
                areas[slot].tumour_boxes[plane]
                if areas[slot].tumour_boxes is not None
                else np.full((len(areas[slot].brain[plane]), 4), -1, dtype=np.int32)
                for slot, _ in kept
            ]
        )
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)

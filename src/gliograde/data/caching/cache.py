"""The slice cache: every patient's normalised modalities, decoded from NIfTI once.

Layout of a cache directory (``<cache_dir>/<key>/``), written to a temporary sibling
(``.<key>.partial-*``) and renamed into place only when complete, under a file lock so
concurrent builders end with one:

- ``volumes.npy``: float16 ``[row, modality, y, x]`` (the cohort's modalities, in MODALITIES
  order): the axial slices of each patient that the slab rule keeps (those the run's slice
  strategy can select, plus a margin: see ``cache_box.SlabRule``), each cut to a block of rows
  and columns around the brain common to all patients, read through a memory map; a stored
  slice of all modalities is one contiguous block. Voxels around the block are background
  (zeros) and are not stored.
- ``index.npz``: the stored modalities, patient ids, their slots, the box layout (with the
  slab kind), per-slice brain and tumour areas and bounding boxes per plane over the full
  grid (the brain area counted per modality code and its boxes per modality, see
  ``preprocess``), and each stored modality's two fingerprints per patient (its voxels and their
  order: see ``identity``).
- ``problems.csv``: patients whose images failed a check (kept out of the cache).
- ``meta.json``: what the key was made of, the cohort root, the size of every file above, the
  sha256 of the small ones, a crc32 of each block of ``volumes.npy`` (its header, then each
  patient's slices), and a checksum of itself. Every open checks them (``volumes.npy``'s blocks
  all, or a random few when it is the file the last full check read: see ``cache_meta``), so a
  truncated or damaged cache is never used.
- ``verified.json``: ``volumes.npy``'s stat when all its blocks last matched.

A process reading a cache holds a shared lock on its folder (``cache_clean.hold_for_reading``),
so ``prepare clean=true`` never removes a cache in use.

The key hashes the stored modalities, every input file's path, size, mtime, ctime, device and
inode, the preprocessing settings and the slab rule, so any change to them gives a new cache
(an in-place rewrite changes the ctime even when the mtime is put back), and anything else
(modalities used, the strategy's parameters within its slab, splits, labels) is applied when
reading. A run whose slab another intact cache holds (tumour slices within a brain slab)
reads that cache rather than decoding again.

Which modalities are stored is discovery's rule (``cohort``): the ones the run asks for plus
any other every patient has. So on a cohort with all four, every run shares one cache, and a
run asking for a subset reads its channels and the brain area of its own modalities from it:
each modality is z-scored on its own, and the brain area is kept per modality code, so what
the run sees equals what a cache of that subset alone would give it. A complete cache is opened without
any lock or write, so it can live in a read-only directory.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from filelock import Timeout
from tqdm.auto import tqdm

from gliograde.data.caching.cache_box import BOX_MARGIN, Bounds, BoxLayout, SlabRule
from gliograde.data.caching.cache_clean import (
    ReaderHold,
    hold_for_reading,
    key_lock,
    partial_path,
    remove_abandoned_builds,
    remove_cache,
)
from gliograde.data.caching.cache_meta import (
    CACHE_FORMAT,
    Block,
    DamagedCacheError,
    crc32_block,
    verify_cache,
    write_meta,
)
from gliograde.data.discovery.cohort import PatientRecord
from gliograde.data.batches.crops import modality_union
from gliograde.data.errors import DataError
from gliograde.data.discovery.nifti import VolumeHeader, check_same_grid, read_header
from gliograde.data.caching.preprocess import SliceAreas, brain_area, preprocess_patient, stored_modalities
from gliograde.data.discovery.specs import PLANES, PreprocessSpec
from gliograde.data.caching.workers import signals_deferred, sigterm_as_exit, worker_pool

log = logging.getLogger(__name__)

CACHE_DTYPE = np.float16


@dataclass
class CachedCohort:
    """A built cache, opened for reading. Volumes are memory-mapped lazily, per process."""

    directory: Path
    patient_ids: tuple[str, ...]
    slots: np.ndarray  # slot of each patient in volumes.npy
    shape: tuple[int, int, int]  # (x, y, z) of every volume
    layout: BoxLayout  # where each slot's stored part sits in the (z, y, x) grid
    modalities: tuple[str, ...]  # the stored channels of volumes.npy, in MODALITIES order
    has_mask: np.ndarray
    brain_codes: dict[str, np.ndarray]  # plane -> [patient, slice, code] (see preprocess)
    tumour_area: dict[str, np.ndarray]  # plane -> [patient, slice]; zeros without a mask
    fingerprints: dict[str, tuple[str, ...]]  # modality -> voxel sha256 per patient (see preprocess)
    # modality -> sha256 of the order of the voxel values per patient (see preprocess)
    order_fingerprints: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # plane -> [patient, slice, modality, 4]: each stored modality's brain box per slice (-1 empty)
    brain_boxes: dict[str, np.ndarray] = field(default_factory=dict)
    # plane -> [patient, slice, 4]: the tumour's box per slice; -1 without a mask
    tumour_boxes: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[DataError] = field(default_factory=list)
    # the shared lock that keeps ``prepare clean=true`` from removing the cache while it is read
    hold: ReaderHold | None = field(default=None, repr=False, compare=False)

    @property
    def volumes_path(self) -> Path:
        return self.directory / "volumes.npy"

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    def volume(self, position: int) -> np.ndarray:
        """The patient at ``position`` on the full grid: float16 ``[z, modality, y, x]``.

        Where the cache holds a slab that may leave out brain slices (a tumour or range
        slab), the slices outside it are unknown, not zeros: they come back masked (a
        ``numpy.ma.MaskedArray``) and NaN underneath.
        """
        layout, slot = self.layout, int(self.slots[position])
        first, depth = int(layout.first_row[slot]), int(layout.depth[slot])
        full = layout.expand(slot, np.load(self.volumes_path, mmap_mode="r")[first : first + depth])
        unknown = np.ones(len(full), dtype=bool)
        unknown[layout.origin[slot, 0] : layout.origin[slot, 0] + depth] = False
        if layout.slab == "brain" or not unknown.any():
            return full
        full[unknown] = np.nan
        return np.ma.masked_array(full, mask=np.repeat(unknown, full[0].size).reshape(full.shape))

    def position(self, patient_id: str) -> int:
        return self.patient_ids.index(patient_id)

    def patient_fingerprint(self, position: int) -> str:
        """One sha256 hex digest over the patient's stored modality fingerprints, in MODALITIES order."""
        parts = [f"{m}={self.fingerprints[m][position]}" for m in self.modalities]
        return hashlib.sha256(";".join(parts).encode()).hexdigest()

    def brain_area_of(self, modalities: Iterable[str], plane: str) -> np.ndarray:
        """``[patient, slice]`` brain area in ``plane`` where any of ``modalities`` is nonzero.

        Raises DataError when a modality is not stored in this cache.
        """
        modalities = list(modalities)
        self.channels_of(modalities)
        return brain_area(self.brain_codes[plane], modalities)

    def brain_boxes_of(self, modalities: Iterable[str], plane: str) -> np.ndarray:
        """``[patient, slice, 4]`` brain box of each slice in ``plane`` where any of
        ``modalities`` is nonzero (-1s where none is).

        Raises DataError when a modality is not stored in this cache.
        """
        return modality_union(self.brain_boxes[plane], self.channels_of(modalities))

    def channels_of(self, modalities: Iterable[str]) -> list[int]:
        """Indices of ``modalities`` among the stored ones; DataError for one not stored."""
        modalities = list(modalities)
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            raise DataError(
                f"the cache holds no {missing[0]} channel (it holds {list(self.modalities)})",
                where=self.directory,
            )
        return [self.modalities.index(m) for m in modalities]

    @classmethod
    def load(cls, directory: Path, check: str = "auto") -> CachedCohort:
        """Open a cache after checking its files against meta.json (raises DamagedCacheError);
        ``check`` says how many blocks of volumes.npy are read (see ``cache_meta.verify_cache``).
        The returned cohort holds the folder's reader lock as long as it lives."""
        directory = Path(directory)
        hold = hold_for_reading(directory)
        try:
            cached = cls._open(directory, check)
        except BaseException:
            hold.release()
            raise
        cached.hold = hold
        return cached

    @classmethod
    def _open(cls, directory: Path, check: str) -> CachedCohort:
        verify_cache(directory, check)
        try:
            with np.load(directory / "index.npz", allow_pickle=False) as index:
                modalities = tuple(str(m) for m in index["modalities"])
                return cls(
                    directory=directory,
                    patient_ids=tuple(str(s) for s in index["patient_ids"]),
                    slots=index["slots"],
                    shape=tuple(int(s) for s in index["shape"]),
                    layout=BoxLayout.from_arrays(index),
                    modalities=modalities,
                    has_mask=index["has_mask"],
                    brain_codes={p: index[f"brain_codes_{p}"] for p in PLANES},
                    tumour_area={p: index[f"tumour_{p}"] for p in PLANES},
                    fingerprints={m: tuple(str(s) for s in index[f"fingerprint_{m}"]) for m in modalities},
                    order_fingerprints={
                        m: tuple(str(s) for s in index[f"order_fingerprint_{m}"]) for m in modalities
                    },
                    brain_boxes={p: index[f"brain_box_{p}"] for p in PLANES},
                    tumour_boxes={p: index[f"tumour_box_{p}"] for p in PLANES},
                    problems=_read_problems(directory / "problems.csv"),
                )
        except (KeyError, ValueError, TypeError, OSError) as exc:  # agrees with meta.json, yet unreadable
            raise DamagedCacheError(
                f"damaged cache file ({type(exc).__name__}: {exc})", where=directory / "index.npz"
            ) from None


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


def open_or_build(
    patients: list[PatientRecord],
    cache_dir: str | Path,
    spec: PreprocessSpec,
    mask_labels: tuple[int, ...],
    on_error: str = "raise",
    progress: bool = True,
    box_margin: int | None = BOX_MARGIN,
    slab: SlabRule = SlabRule(),
    required: Sequence[str] | None = None,
    check: str = "auto",
) -> CachedCohort:
    """Return the cache for these patients and settings, building it first if needed.

    With ``on_error="raise"`` the first bad patient stops everything (nothing is left behind);
    with ``"skip"`` bad patients are left out and recorded in ``problems.csv``.

    An intact cache is opened without locking or writing anything. A damaged one (a file's
    size or checksum disagrees with meta.json) is named in a warning and rebuilt, or refused
    in one line naming the file where ``cache_dir`` is not writable.

    ``box_margin`` is the margin (voxels) of the stored block around every patient's brain
    in y and x; None stores the full grid. ``slab`` says which axial slices are stored.
    ``required`` are the modalities the run needs (None: every one the records hold); another
    modality whose file fails a header check for any patient is left out of the cache for
    every patient (see :func:`without_broken_optional`), never blamed on the patient.
    ``check`` is how much of volumes.npy an open verifies (see ``cache_meta.verify_cache``).
    """
    if not patients:
        raise DataError("no patients to cache", where=cache_dir)
    cache_dir = Path(cache_dir)
    patients = without_broken_optional(patients, cache_dir, spec, mask_labels, box_margin, slab, required)
    key = cache_key(patients, spec, mask_labels, box_margin, slab)
    final = cache_dir / key
    damage: DamagedCacheError | None = None
    if not final.is_dir() and box_margin is not None:
        wider = _covering_cache(patients, cache_dir, spec, mask_labels, box_margin, slab, check)
        if wider is not None:
            return _checked(wider, on_error)
    if final.is_dir():
        try:
            return _checked(CachedCohort.load(final, check), on_error)
        except DamagedCacheError as err:
            damage = err
            if not _is_writable(cache_dir):
                raise DamagedCacheError(
                    f"{err.problem}; the cache directory is read-only, so it cannot be rebuilt "
                    "(delete the cache or set data.cache_dir to a writable directory)",
                    where=err.where,
                ) from None
            log.warning("%s; rebuilding the cache", err)
    _make_writable_dir(cache_dir)
    with _key_lock(cache_dir, key, final):
        if final.is_dir():
            try:
                return _checked(CachedCohort.load(final, check), on_error)  # built while we waited
            except DamagedCacheError as err:
                if damage is None:
                    log.warning("%s; rebuilding the cache", err)
                remove_cache(final, key)
        remove_abandoned_builds(cache_dir, held_key=key)
        _build(patients, cache_dir, key, spec, mask_labels, on_error, progress, box_margin, slab)
    return _checked(CachedCohort.load(final, check), on_error)


def current_cache(
    patients: list[PatientRecord],
    cache_dir: str | Path,
    spec: PreprocessSpec,
    mask_labels: tuple[int, ...],
    slab: SlabRule = SlabRule(),
    required: Sequence[str] | None = None,
) -> tuple[str, str]:
    """The key of the cache ``open_or_build`` would read (its own, or a covering one that exists
    in its place) and its generation (see ``cache_generation``)."""
    patients = without_broken_optional(patients, cache_dir, spec, mask_labels, BOX_MARGIN, slab, required)
    generation = cache_generation(patients, spec, mask_labels)
    key = cache_key(patients, spec, mask_labels, BOX_MARGIN, slab)
    if not (Path(cache_dir) / key).is_dir():
        for rule in slab.covering():
            other = cache_key(patients, spec, mask_labels, BOX_MARGIN, rule)
            if (Path(cache_dir) / other).is_dir():
                return other, generation
    return key, generation


def current_key(*args, **kwargs) -> str:
    """The key of :func:`current_cache` (same arguments)."""
    return current_cache(*args, **kwargs)[0]


def without_broken_optional(
    patients: list[PatientRecord],
    cache_dir: str | Path,
    spec: PreprocessSpec,
    mask_labels: tuple[int, ...],
    box_margin: int | None,
    slab: SlabRule,
    required: Sequence[str] | None,
) -> list[PatientRecord]:
    """``patients`` without the modalities outside ``required`` whose file fails a header check
    (unreadable, truncated, not 3D, off the patient's grid) for any patient; one warning names them.

    Discovery adds to the run's modalities every other one all patients have, so that runs
    share a cache; such an extra modality must not fail a run that does not use it. The check
    reads headers only, and only when no cache of ``patients`` as they are exists already.
    """
    if required is None or _cache_exists(patients, Path(cache_dir), spec, mask_labels, box_margin, slab):
        return patients
    wanted = set(required)
    optional = [m for m in stored_of(patients) if m not in wanted]
    broken: dict[str, DataError] = {}
    for record in patients:
        left = [m for m in optional if m not in broken]
        if not left:
            break
        try:
            first = next(m for m in record.modalities if m in wanted)
            reference = {first: read_header(record.modalities[first], record.patient_id, spec.reorient)}
        except (StopIteration, DataError):
            continue  # the run's own files: the build's header checks report them
        for modality in left:
            try:
                header = read_header(record.modalities[modality], record.patient_id, spec.reorient)
                check_same_grid({**reference, modality: header}, record.patient_id)
            except DataError as err:
                broken[modality] = err
    if not broken:
        return patients
    log.warning(
        "Leaving %s out of the cache for every patient (the run does not use it): %s",
        "/".join(broken),
        "; ".join(str(err) for err in broken.values()),
    )
    return [
        replace(r, modalities={m: p for m, p in r.modalities.items() if m not in broken}) for r in patients
    ]


def _cache_exists(
    patients: list[PatientRecord],
    cache_dir: Path,
    spec: PreprocessSpec,
    mask_labels: tuple[int, ...],
    box_margin: int | None,
    slab: SlabRule,
) -> bool:
    """Whether the cache of ``patients``, or one covering its slab, is there (intact or not)."""
    rules = [slab] + (slab.covering() if box_margin is not None else [])
    keys = [cache_key(patients, spec, mask_labels, box_margin, rule) for rule in rules]
    return any((cache_dir / key).is_dir() for key in keys)


def _covering_cache(
    patients: list[PatientRecord],
    cache_dir: Path,
    spec: PreprocessSpec,
    mask_labels: tuple[int, ...],
    box_margin: int,
    slab: SlabRule,
    check: str = "auto",
) -> CachedCohort | None:
    """An intact cache of the same inputs whose slab holds every slice ``slab`` can need."""
    for rule in slab.covering():
        directory = cache_dir / cache_key(patients, spec, mask_labels, box_margin, rule)
        if directory.is_dir():
            try:
                return CachedCohort.load(directory, check)
            except DamagedCacheError:
                continue  # its own run rebuilds it; this one builds its own
    return None


def _checked(cached: CachedCohort, on_error: str) -> CachedCohort:
    if on_error == "raise" and cached.problems:
        raise cached.problems[0]
    return cached


def _is_writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK)


def _make_writable_dir(cache_dir: Path) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create cache directory ({exc.strerror})", where=cache_dir) from None
    if not _is_writable(cache_dir):
        raise DataError("cache directory is not writable (set data.cache_dir)", where=cache_dir)


@contextmanager
def _key_lock(cache_dir: Path, key: str, final: Path) -> Iterator[None]:
    lock = key_lock(cache_dir, key)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("Another process is building cache %s; waiting for it", final)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


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
            _write_problems(tmp / "problems.csv", problems)
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


def _write_problems(path: Path, problems: list[DataError]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "file", "problem"])
        for err in problems:
            writer.writerow([err.patient or "", err.where or "", err.problem])


def _read_problems(path: Path) -> list[DataError]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [
            DataError(row["problem"], row["patient_id"] or None, row["file"] or None)
            for row in csv.DictReader(fh)
        ]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1

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

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from filelock import Timeout

from gliograde.data.caching.build import _build
from gliograde.data.caching.cache_box import BOX_MARGIN, SlabRule
from gliograde.data.caching.cache_clean import key_lock, remove_abandoned_builds, remove_cache
from gliograde.data.caching.cache_meta import DamagedCacheError
from gliograde.data.caching.key import cache_generation, cache_key, stored_of
from gliograde.data.discovery.patient_files import PatientRecord
from gliograde.data.discovery.nifti import check_same_grid, read_header
from gliograde.data.discovery.specs import PreprocessSpec
from gliograde.data.errors import DataError
from gliograde.data.caching.reader import CachedCohort

log = logging.getLogger(__name__)


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

"""The slice cache: every patient's normalised modalities, decoded from NIfTI once.

Layout of a cache directory (``<cache_dir>/<key>/``), written to a temporary sibling
(``.<key>.partial-*``) and renamed into place only when complete, under a file lock so
concurrent builders end with one:

- ``volumes.npy``: float16 ``[slot, z, modality, y, x]`` (the cohort's modalities, in
  MODALITIES order), read through a memory map; an axial slice of all modalities is one
  contiguous block.
- ``index.npz``: the stored modalities, patient ids, their slots, per-slice brain and tumour
  areas and bounding boxes per plane (the brain counted per modality code, see
  ``preprocess``), and each stored modality's voxel fingerprint per patient.
- ``problems.csv``: patients whose images failed a check (kept out of the cache).
- ``meta.json``: what the key was made of, the cohort root, the size of every file above and
  the sha256 of the small ones, and a checksum of itself. Every open checks them (cheaply:
  ``volumes.npy`` by size), so a truncated or damaged cache is never used.

The key hashes the stored modalities, every input file's path, size, mtime, ctime, device and
inode and the preprocessing settings, so any change to either gives a new cache (an in-place
rewrite changes the ctime even when the mtime is put back), and anything else (modalities
used, slice strategy, splits, labels) is applied when reading.

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
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import Timeout
from tqdm.auto import tqdm

from gliograde.data.cache_clean import key_lock, partial_path, remove_abandoned_builds, remove_cache
from gliograde.data.cache_meta import CACHE_FORMAT, DamagedCacheError, verify_cache, write_meta
from gliograde.data.cohort import PatientRecord
from gliograde.data.errors import DataError
from gliograde.data.nifti import VolumeHeader, check_same_grid, read_header
from gliograde.data.preprocess import SliceAreas, brain_area, preprocess_patient, stored_modalities
from gliograde.data.specs import PLANES, PreprocessSpec
from gliograde.data.workers import signals_deferred, sigterm_as_exit, worker_pool

log = logging.getLogger(__name__)

CACHE_DTYPE = np.float16


@dataclass
class CachedCohort:
    """A built cache, opened for reading. Volumes are memory-mapped lazily, per process."""

    directory: Path
    patient_ids: tuple[str, ...]
    slots: np.ndarray  # slot of each patient in volumes.npy
    shape: tuple[int, int, int]  # (x, y, z) of every volume
    modalities: tuple[str, ...]  # the stored channels of volumes.npy, in MODALITIES order
    has_mask: np.ndarray
    brain_area: dict[str, np.ndarray]  # plane -> [patient, slice]: nonzero in any stored modality
    brain_codes: dict[str, np.ndarray]  # plane -> [patient, slice, code] (see preprocess)
    tumour_area: dict[str, np.ndarray]  # plane -> [patient, slice]; zeros without a mask
    fingerprints: dict[str, tuple[str, ...]]  # modality -> voxel sha256 per patient (see preprocess)
    brain_boxes: dict[str, np.ndarray] = field(default_factory=dict)  # plane -> [patient, slice, 4]
    tumour_boxes: dict[str, np.ndarray] = field(default_factory=dict)  # plane -> same; -1 without a mask
    problems: list[DataError] = field(default_factory=list)

    @property
    def volumes_path(self) -> Path:
        return self.directory / "volumes.npy"

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

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
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            raise DataError(
                f"the cache holds no {missing[0]} channel (it holds {list(self.modalities)})",
                where=self.directory,
            )
        return brain_area(self.brain_codes[plane], modalities)

    @classmethod
    def load(cls, directory: Path) -> CachedCohort:
        """Open a cache after checking its files against meta.json (raises DamagedCacheError)."""
        directory = Path(directory)
        verify_cache(directory)
        try:
            with np.load(directory / "index.npz", allow_pickle=False) as index:
                modalities = tuple(str(m) for m in index["modalities"])
                return cls(
                    directory=directory,
                    patient_ids=tuple(str(s) for s in index["patient_ids"]),
                    slots=index["slots"],
                    shape=tuple(int(s) for s in index["shape"]),
                    modalities=modalities,
                    has_mask=index["has_mask"],
                    brain_area={p: index[f"brain_{p}"] for p in PLANES},
                    brain_codes={p: index[f"brain_codes_{p}"] for p in PLANES},
                    tumour_area={p: index[f"tumour_{p}"] for p in PLANES},
                    fingerprints={m: tuple(str(s) for s in index[f"fingerprint_{m}"]) for m in modalities},
                    brain_boxes={p: index[f"brain_box_{p}"] for p in PLANES},
                    tumour_boxes={p: index[f"tumour_box_{p}"] for p in PLANES},
                    problems=_read_problems(directory / "problems.csv"),
                )
        except (KeyError, ValueError, OSError) as exc:  # agrees with meta.json, yet unreadable
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


def cache_key(patients: list[PatientRecord], spec: PreprocessSpec, mask_labels: tuple[int, ...]) -> str:
    """Hash of every input file's identity and stat, and of the settings that change voxels.

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
) -> CachedCohort:
    """Return the cache for these patients and settings, building it first if needed.

    With ``on_error="raise"`` the first bad patient stops everything (nothing is left behind);
    with ``"skip"`` bad patients are left out and recorded in ``problems.csv``.

    An intact cache is opened without locking or writing anything. A damaged one (a file's
    size or checksum disagrees with meta.json) is named in a warning and rebuilt, or refused
    in one line naming the file where ``cache_dir`` is not writable.
    """
    if not patients:
        raise DataError("no patients to cache", where=cache_dir)
    cache_dir = Path(cache_dir)
    key = cache_key(patients, spec, mask_labels)
    final = cache_dir / key
    damage: DamagedCacheError | None = None
    if final.is_dir():
        try:
            return _checked(CachedCohort.load(final), on_error)
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
                return _checked(CachedCohort.load(final), on_error)  # built while we waited
            except DamagedCacheError as err:
                if damage is None:
                    log.warning("%s; rebuilding the cache", err)
                remove_cache(final, key)
        remove_abandoned_builds(cache_dir, held_key=key)
        _build(patients, cache_dir, key, spec, mask_labels, on_error, progress)
    return _checked(CachedCohort.load(final), on_error)


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
) -> None:
    good, problems, shape = _check_headers(patients, on_error, spec.reorient)
    if not good:
        raise DataError(f"every patient failed a check; first: {problems[0]}", where=cache_dir)
    x, y, z = shape
    channels = len(stored_of(good))
    _check_free_space(cache_dir, len(good) * z * channels * y * x * np.dtype(CACHE_DTYPE).itemsize)
    tmp = partial_path(cache_dir, key)
    with sigterm_as_exit():
        tmp.mkdir()
        try:
            kept, areas = _write_volumes(tmp, good, problems, shape, spec, mask_labels, on_error, progress)
            _write_index(tmp / "index.npz", kept, areas, shape)
            _write_problems(tmp / "problems.csv", problems)
            meta = {
                "key": key,
                "cohort_root": str(cohort_root(patients)),
                "patients": len(kept),
                "skipped": len(problems),
                "shape_xyz": list(shape),
                "modalities": list(stored_of(good)),
                "dtype": np.dtype(CACHE_DTYPE).name,
                "clip_percentiles": spec.clip_percentiles,
                "reorient": spec.reorient,
                "mask_labels": list(mask_labels),
            }
            write_meta(tmp, meta)
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
) -> tuple[list[tuple[int, PatientRecord]], dict[int, SliceAreas]]:
    """Decode every patient into ``tmp/volumes.npy``; return the (slot, patient) pairs kept."""
    x, y, z = shape
    channels = len(stored_of(good))
    volumes = np.lib.format.open_memmap(
        tmp / "volumes.npy", mode="w+", dtype=CACHE_DTYPE, shape=(len(good), z, channels, y, x)
    )
    del volumes  # workers open it themselves
    areas, decode_problems = _preprocess_all(good, tmp / "volumes.npy", spec, mask_labels, on_error, progress)
    problems += decode_problems
    kept = [(slot, r) for slot, r in enumerate(good) if slot in areas]
    if not kept:
        raise DataError(f"every patient failed a check; first: {problems[0]}", where=tmp.parent)
    return kept, areas


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


def _preprocess_slot(
    volumes_path: Path, slot: int, record: PatientRecord, spec: PreprocessSpec, mask_labels: tuple[int, ...]
) -> SliceAreas:
    volumes = np.load(volumes_path, mmap_mode="r+")
    try:
        return preprocess_patient(
            record.patient_id,
            record.modalities,
            record.mask,
            volumes[slot],
            mask_labels,
            spec.clip_percentiles,
            spec.reorient,
            out_is_zero=True,  # a new volumes.npy reads as zeros: write brain voxels only
        )
    finally:
        volumes.flush()
        del volumes


def _preprocess_all(
    good: list[PatientRecord],
    volumes_path: Path,
    spec: PreprocessSpec,
    mask_labels: tuple[int, ...],
    on_error: str,
    progress: bool,
) -> tuple[dict[int, SliceAreas], list[DataError]]:
    workers = min(spec.workers or available_cores(), len(good))
    areas: dict[int, SliceAreas] = {}
    problems: list[DataError] = []
    bar = tqdm(total=len(good), desc="Caching patients", unit="patient", disable=not progress)

    def record_outcome(slot: int, outcome: SliceAreas | DataError) -> None:
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
                record_outcome(slot, _outcome(volumes_path, slot, record, spec, mask_labels))
        else:
            with worker_pool(workers) as pool:
                with signals_deferred():
                    futures = {
                        pool.submit(_outcome, volumes_path, slot, record, spec, mask_labels): slot
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


def _outcome(volumes_path, slot, record, spec, mask_labels) -> SliceAreas | DataError:
    """Preprocess one patient; any failure comes back as a DataError naming the patient."""
    try:
        return _preprocess_slot(volumes_path, slot, record, spec, mask_labels)
    except DataError as err:
        return err
    except (MemoryError, OSError) as exc:  # the machine, not the patient: stop everything
        raise RuntimeError(f"patient {record.patient_id}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        problem = f"cannot preprocess ({type(exc).__name__}: {exc})".replace("\n", " ")
        return DataError(problem, record.patient_id, record.folder)


def _write_index(
    path: Path, kept: list[tuple[int, PatientRecord]], areas: dict[int, SliceAreas], shape
) -> None:
    stored = stored_of([r for _, r in kept])
    arrays: dict[str, np.ndarray] = {
        "modalities": np.array(stored),
        "patient_ids": np.array([r.patient_id for _, r in kept]),
        "slots": np.array([slot for slot, _ in kept], dtype=np.int64),
        "shape": np.array(shape, dtype=np.int64),
        "has_mask": np.array([areas[slot].tumour is not None for slot, _ in kept]),
    }
    for modality in stored:
        arrays[f"fingerprint_{modality}"] = np.array([areas[slot].fingerprints[modality] for slot, _ in kept])
    for plane in PLANES:
        arrays[f"brain_{plane}"] = np.stack([areas[slot].brain[plane] for slot, _ in kept])
        arrays[f"brain_codes_{plane}"] = np.stack([areas[slot].brain_codes[plane] for slot, _ in kept])
        arrays[f"tumour_{plane}"] = np.stack(
            [
                areas[slot].tumour[plane]
                if areas[slot].tumour is not None
                else np.zeros_like(areas[slot].brain[plane])
                for slot, _ in kept
            ]
        )
    for plane in PLANES:
        arrays[f"brain_box_{plane}"] = np.stack([areas[slot].brain_boxes[plane] for slot, _ in kept])
        arrays[f"tumour_box_{plane}"] = np.stack(
            [
                areas[slot].tumour_boxes[plane]
                if areas[slot].tumour_boxes is not None
                else np.full_like(areas[slot].brain_boxes[plane], -1)
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

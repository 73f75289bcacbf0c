"""An opened cache: its patients' index, their volumes mapped from volumes.npy, the problems of its
build, and the checks an open makes against meta.json."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gliograde.data.batches.crops import modality_union
from gliograde.data.caching.cache_box import BoxLayout
from gliograde.data.caching.cache_clean import ReaderHold, hold_for_reading
from gliograde.data.caching.cache_meta import DamagedCacheError, verify_cache
from gliograde.data.caching.preprocess import brain_area
from gliograde.data.caching.problems import read_problems
from gliograde.data.discovery.specs import PLANES
from gliograde.data.errors import DataError


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
                    problems=read_problems(directory / "problems.csv"),
                )
        except (KeyError, ValueError, TypeError, OSError) as exc:  # agrees with meta.json, yet unreadable
            raise DamagedCacheError(
                f"damaged cache file ({type(exc).__name__}: {exc})", where=directory / "index.npz"
            ) from None

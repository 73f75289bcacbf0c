"""LightningDataModule: cohort -> cache -> slice selection -> patient split -> DataLoaders."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import numpy as np
import pandas as pd
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, SequentialSampler

from gliograde.atomic import write_text
from gliograde.data.augment import BatchAugmenter
from gliograde.data.cache import CachedCohort, open_or_build
from gliograde.data.cohort import Cohort, PatientRecord, discover_cohort
from gliograde.data.dataset import SliceDataset, cast, identity_collate
from gliograde.data.errors import DataError
from gliograde.data.identity import content_duplicates, fingerprint_table
from gliograde.data.samplers import EpochShuffleSampler, EpochWeightedSampler
from gliograde.data.slices import NEEDS_MASK, select_slices, validate_slice_spec
from gliograde.data.specs import (
    MODALITIES,
    AugmentSpec,
    LabelSpec,
    LayoutSpec,
    PreprocessSpec,
    SliceSpec,
    SplitSpec,
    SyntheticSpec,
    from_mapping,
)
from gliograde.data.splits import SPLITS, assert_disjoint, split_patients, splits_frame
from gliograde.errors import ConfigError

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
SAMPLERS = ("random", "weighted")
TRANSFER_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class PatientSlices:
    """The selected slices of one usable patient."""

    patient_id: str
    position: int  # index into the cache's patient list
    label: int
    slices: np.ndarray


class GliomaDataModule(pl.LightningDataModule):
    """BraTS-style cohort to patient-split batches of ``[B, C, H, W]`` slices.

    Arguments mirror the ``data.*`` config; nested groups accept mappings (see ``specs``).
    ``split=None`` means no split at all: every usable patient goes to the ``all`` dataset,
    labelled or not (for evaluating or predicting on an external cohort).
    ``prepare_data`` (one process per node) generates the synthetic cohort if asked and builds
    the cache; ``setup`` reads the cache index, selects slices and splits patients.
    """

    def __init__(
        self,
        root: str | Path,
        layout: Mapping[str, Any] | LayoutSpec | None = None,
        labels: Mapping[str, Any] | LabelSpec | None = None,
        cache_dir: str | Path = "data/cache",
        modalities: Sequence[str] = ("flair", "t1ce", "t1", "t2"),
        slices: Mapping[str, Any] | SliceSpec | None = None,
        split: Mapping[str, Any] | SplitSpec | None = SplitSpec(),
        folds: int | None = None,
        fold: int | None = None,
        sampler: str = "random",
        augment: Mapping[str, Any] | AugmentSpec | None = None,
        preprocess: Mapping[str, Any] | PreprocessSpec | None = None,
        synthetic: Mapping[str, Any] | SyntheticSpec | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        on_error: str = "raise",
        require_labels: bool = True,
        transfer_dtype: str = "float16",
        seed: int = 0,
        progress: bool = True,
    ):
        super().__init__()
        self.root = Path(root).expanduser()
        self.layout = from_mapping(LayoutSpec, layout, "data.layout")
        self.label_spec = from_mapping(LabelSpec, labels, "data.labels")
        self.cache_dir = Path(cache_dir).expanduser()
        self.modalities = tuple(modalities)
        self.slice_spec = from_mapping(SliceSpec, slices, "data.slices")
        self.split_spec = None if split is None else from_mapping(SplitSpec, split, "data.split")
        self.folds = folds
        self.fold = fold
        self.sampler = sampler
        self.augment_spec = from_mapping(AugmentSpec, augment, "data.augment")
        self.preprocess_spec = from_mapping(PreprocessSpec, preprocess, "data.preprocess")
        self.synthetic = (
            None if synthetic is None else from_mapping(SyntheticSpec, synthetic, "data.synthetic")
        )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.on_error = on_error
        self.require_labels = require_labels
        self.transfer_dtype = transfer_dtype
        self.seed = seed
        self.progress = progress
        self._validate_options()

        self.cohort: Cohort | None = None
        self.cached: CachedCohort | None = None
        self.skipped: list[DataError] = []
        self.patients: list[PatientSlices] = []
        self.assignment: dict[str, str] = {}
        self.datasets: dict[str, SliceDataset] = {}
        self._augmenter: BatchAugmenter | None = None
        self._augment_epoch = -1

    # ------------------------------------------------------------------ checks
    def _validate_options(self) -> None:
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(
                f"data.modalities={list(self.modalities)} must be a non-empty list without repeats"
            )
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise ConfigError(f"data.modalities: unknown {unknown}; choose from {list(MODALITIES)}")
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"data.on_error={self.on_error!r} must be one of {list(ON_ERROR)}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"data.sampler={self.sampler!r} must be one of {list(SAMPLERS)}")
        if self.transfer_dtype not in TRANSFER_DTYPES:
            raise ConfigError(
                f"data.transfer_dtype={self.transfer_dtype!r} must be one of {list(TRANSFER_DTYPES)}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size={self.batch_size} must be at least 1")
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"data.folds={self.folds} must be at least 2 (or null)")
        if self.folds is not None and self.split_spec is None:
            raise ConfigError(f"data.folds={self.folds} needs a split: data.split is null (no split)")
        if self.fold is not None and self.folds is None:
            raise ConfigError(f"data.fold={self.fold} needs data.folds (e.g. data.folds=5)")
        if self.folds is not None and (self.fold is None or not 0 <= self.fold < self.folds):
            raise ConfigError(
                f"data.fold={self.fold} must be in 0..{self.folds - 1} when data.folds={self.folds}"
            )
        validate_slice_spec(self.slice_spec)

    @property
    def num_channels(self) -> int:
        return len(self.modalities)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.label_spec.classes

    # ------------------------------------------------------------ preparation
    def prepare_data(self) -> None:
        """Generate the synthetic cohort (if configured and absent) and build the cache."""
        self._load()

    def _ensure_synthetic(self) -> None:
        if self.synthetic is None:
            return
        from gliograde.data.synthetic import generate_cohort, generation_settings, settings_mismatch

        wanted = dataclasses.asdict(self.synthetic)
        if _has_entries(self.root):
            made_with = generation_settings(self.root)
            problem = None if made_with is None else settings_mismatch(made_with, wanted)
            if problem:
                raise ConfigError(f"{self.root} {problem}")
            return

        self.root.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root.parent / f".{self.root.name}.lock")):
            if not _has_entries(self.root):
                log.info(
                    "Generating the synthetic cohort (%d patients) in %s", self.synthetic.patients, self.root
                )
                if self.root.exists():
                    self.root.rmdir()
                generate_cohort(self.root, **wanted, progress=self.progress)

    def _load(self) -> None:
        """Discover the cohort and open (or build) its cache; idempotent."""
        if self.cached is not None:
            return
        self._ensure_synthetic()
        cohort = discover_cohort(self.root, self.layout, self.label_spec, self.require_labels)
        if cohort.problems and self.on_error == "raise":
            first = cohort.problems[0]
            more = f" (and {len(cohort.problems) - 1} more problem(s))" if len(cohort.problems) > 1 else ""
            raise DataError(first.problem + more, first.patient, first.where)
        if self.slice_spec.strategy in NEEDS_MASK and self.on_error == "raise":
            for record in cohort.patients:
                if record.mask is None:  # fail before the long build, not after it
                    select_slices(
                        record.patient_id, np.zeros(1), None, self.slice_spec, self._mask_hint(record)
                    )
        cached = open_or_build(
            cohort.patients,
            self.cache_dir,
            self.preprocess_spec,
            self.layout.mask_labels,
            on_error=self.on_error,
            progress=self.progress,
        )
        unusable = self._mask_problems(cohort, cached)
        if unusable and self.on_error == "raise":
            raise unusable[0]
        self.cohort, self.cached = cohort, cached
        self.skipped = list(cohort.problems) + list(cached.problems) + unusable
        for err in self.skipped:
            log.warning("Skipped %s", err)
        self._write_cohort_tables()

    def _mask_problems(self, cohort: Cohort, cached: CachedCohort) -> list[DataError]:
        """Cached patients whose mask makes them unusable: empty, or absent when the strategy needs one.

        An empty mask is a problem whatever the strategy (a glioma cohort's mask without tumour
        is a wrong file), so the patients that are split do not depend on the strategy.
        """
        records = {r.patient_id: r for r in cohort.patients}
        problems = []
        for position, patient_id in enumerate(cached.patient_ids):
            record = records[patient_id]
            if cached.has_mask[position] and not cached.tumour_area["axial"][position].any():
                problems.append(
                    DataError(
                        "mask is empty (no tumour voxel): replace it with the patient's tumour mask, "
                        "or set data.on_error=skip to leave the patient out",
                        patient_id,
                        record.mask,
                    )
                )
            elif self.slice_spec.strategy in NEEDS_MASK and not cached.has_mask[position]:
                try:
                    select_slices(patient_id, np.zeros(1), None, self.slice_spec, self._mask_hint(record))
                except DataError as err:
                    problems.append(err)
        return problems

    def cohort_table(self) -> pd.DataFrame:
        """One row per patient found: id, label, modality and mask paths, and ``ok``/``skipped``."""
        assert self.cohort is not None and self.cached is not None
        cached_ids = set(self.cached.patient_ids)
        skipped_ids = {err.patient for err in self.skipped if err.patient}
        rows = []
        for record in self.cohort.patients:
            usable = record.patient_id in cached_ids and record.patient_id not in skipped_ids
            rows.append(
                [record.patient_id, self._label_name(record.label)]
                + [str(record.modalities[m]) for m in MODALITIES]
                + [str(record.mask or ""), "ok" if usable else "skipped"]
            )
        listed = {row[0] for row in rows}
        for patient in sorted(skipped_ids - listed):  # skipped before their files were found
            rows.append([patient, ""] + [""] * len(MODALITIES) + ["", "skipped"])
        columns = ["patient_id", "label", *MODALITIES, "mask", "status"]
        return pd.DataFrame(sorted(rows), columns=columns, dtype=object)

    def skipped_table(self) -> pd.DataFrame:
        """One row per problem that left a patient out: id, file and problem."""
        rows = [[e.patient or "", e.where or "", e.problem] for e in self.skipped]
        return pd.DataFrame(rows, columns=["patient_id", "file", "problem"], dtype=object)

    def _write_cohort_tables(self) -> None:
        """cohort.csv and skipped.csv beside the cache (atomically; labels as read now).

        A complete cache may sit in a read-only place: then the tables are left as they are.
        """
        assert self.cached is not None
        directory = self.cached.directory
        if not os.access(directory, os.W_OK):
            log.info("Cache %s is read-only; not writing cohort.csv and skipped.csv", directory)
            return
        try:
            for name, table in (("cohort.csv", self.cohort_table()), ("skipped.csv", self.skipped_table())):
                write_text(directory / name, table.to_csv(index=False, lineterminator="\n"))
        except PermissionError as err:  # e.g. a read-only mount that os.access cannot see
            log.info("Not writing the cohort tables beside the cache (%s)", err)

    def _mask_hint(self, record: PatientRecord) -> str:
        expected = self.layout.mask_file.format(id=record.patient_id)
        return str(record.folder / f"{expected}.nii[.gz]")

    def _label_name(self, label: int | None) -> str:
        return "" if label is None else self.classes[label]

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Split patients, select their slices, and build the datasets (reads only the index).

        The split is made over the patients that can contribute slices (every usable patient
        with a non-empty mask, or without a mask when the strategy needs none) before slice
        selection, so among mask-based strategies it depends on the cohort and ``data.split``
        alone: a sweep over them keeps one test set. A split that selection leaves without a
        patient of some class is refused before any training.
        """
        if self.datasets:
            return
        self._load()
        assert self.cohort is not None and self.cached is not None
        cached = self.cached
        excluded = {err.patient for err in self.skipped if err.patient}
        records = {r.patient_id: r for r in self.cohort.patients if r.patient_id not in excluded}
        usable = [(pos, pid) for pos, pid in enumerate(cached.patient_ids) if pid in records]
        if not usable:
            raise DataError("no usable patient is left after the checks (see skipped.csv)", where=self.root)
        assignment = self._assign([pid for _, pid in usable], [records[pid].label for _, pid in usable])

        plane = self.slice_spec.plane
        patients: list[PatientSlices] = []
        empty: list[str] = []
        for position, patient_id in usable:
            record = records[patient_id]
            tumour = cached.tumour_area[plane][position] if cached.has_mask[position] else None
            chosen = select_slices(
                patient_id,
                cached.brain_area[plane][position],
                tumour,
                self.slice_spec,
                self._mask_hint(record),
            )
            if chosen.size == 0:
                empty.append(f"{patient_id} ({assignment[patient_id]})")
                continue
            label = -1 if record.label is None else record.label
            patients.append(PatientSlices(patient_id, position, label, chosen))
        if empty:
            log.warning(
                "%d patient(s) have no slice selected by data.slices.strategy=%s and are left out: %s",
                len(empty),
                self.slice_spec.strategy,
                ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else ""),
            )
        if not patients:
            raise ConfigError(
                f"data.slices={self._describe_slices()} selects no slice of any patient; "
                "choose another data.slices setting"
            )
        self.patients = patients
        self.assignment = {p.patient_id: assignment[p.patient_id] for p in patients}
        self._check_split_sizes(set(assignment.values()), len(empty))
        groups = {name: [p for p in patients if self.assignment[p.patient_id] == name] for name in SPLITS}
        groups["all"] = patients
        self.datasets = {name: self._dataset(group) for name, group in groups.items() if group}
        assert_disjoint(
            [
                (cached.patient_ids[position], name)
                for name in SPLITS
                if name in self.datasets
                for position in np.unique(self.datasets[name].patient_positions)
            ]
        )
        self._refuse_shared_images()
        if self.augment_spec.enabled:
            self._augmenter = BatchAugmenter(self.augment_spec, seed=self.seed)

    def _refuse_shared_images(self) -> None:
        """The same images under two ids in different splits would leak; in one split, warn."""
        for match in content_duplicates(self.fingerprint_table()):
            where = (self.assignment[match.patient_id], self.assignment[match.other_id])
            shared = "/".join(match.modalities)
            if where[0] != where[1]:
                raise DataError(
                    f"holds the same {shared} images as {match.other_id}, but they are in the "
                    f"{where[0]} and {where[1]} splits (one patient under two ids would leak): "
                    "remove one of the two folders",
                    match.patient_id,
                    self.root,
                )
            log.warning(
                "Patients %s and %s hold the same %s images (both in %s): one patient counted twice?",
                match.patient_id,
                match.other_id,
                shared,
                where[0],
            )

    def _assign(self, patient_ids: list[str], labels: list[int | None]) -> dict[str, str]:
        """Each patient's split: ``all`` without a split (or labels, when they are optional)."""
        assert self.cohort is not None
        if self.split_spec is None:
            return dict.fromkeys(patient_ids, "all")
        if self.cohort.labelled and all(label is not None for label in labels):
            return split_patients(patient_ids, labels, self.classes, self.split_spec, self.folds, self.fold)
        if self.require_labels:
            raise DataError(
                "training needs labels, but the cohort has none: set data.labels.file (and its "
                "columns), or data.require_labels=false to only predict",
                where=self.root,
            )
        return dict.fromkeys(patient_ids, "all")

    def _check_split_sizes(self, splits: set[str], n_left_out: int) -> None:
        """Every split made must keep a patient of each class after slice selection."""
        for name in SPLITS:
            if name not in splits:
                continue
            present = Counter(p.label for p in self.patients if self.assignment[p.patient_id] == name)
            lacking = [self.classes[c] for c in range(len(self.classes)) if not present.get(c)]
            if lacking:
                raise ConfigError(
                    f"the {name} split has no {' or '.join(lacking)} patient left after slice selection "
                    f"by data.slices={self._describe_slices()} ({n_left_out} patient(s) got no slice): "
                    "choose a data.slices setting that selects slices of every patient (e.g. a lower "
                    "data.slices.min_area), or add patients"
                )

    def _describe_slices(self) -> str:
        spec = self.slice_spec
        detail = {
            "tumor_topk": f"k={spec.k}",
            "tumor_all": f"min_area={spec.min_area}",
            "brain": f"min_brain_fraction={spec.min_brain_fraction}",
            "middle": f"n={spec.n}",
            "range": f"z_min={spec.z_min}, z_max={spec.z_max}",
        }.get(spec.strategy, "")
        return f"{{strategy={spec.strategy}, {detail}, plane={spec.plane}}}"

    def _dataset(self, group: list[PatientSlices]) -> SliceDataset:
        assert self.cached is not None
        counts = [len(p.slices) for p in group]
        positions = np.repeat([p.position for p in group], counts)
        return SliceDataset(
            volumes_path=self.cached.volumes_path,
            slots=self.cached.slots[positions],
            patient_positions=positions,
            slice_indices=np.concatenate([p.slices for p in group]),
            labels=np.repeat([p.label for p in group], counts),
            patient_ids=self.cached.patient_ids,
            modalities=self.modalities,
            plane=self.slice_spec.plane,
            dtype=TRANSFER_DTYPES[self.transfer_dtype],
        )

    # ------------------------------------------------------------- statistics
    def class_counts(self, split: str = "train") -> np.ndarray:
        """Slices per class in ``split``."""
        labels = self.datasets[split].labels
        return np.bincount(labels[labels >= 0], minlength=len(self.classes))

    @property
    def class_weights(self) -> torch.Tensor:
        """Loss weights from the training slices: total / (classes * count), as sklearn's 'balanced'."""
        counts = self.class_counts("train").astype(np.float64)
        weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
        return torch.tensor(weights, dtype=torch.float32)

    def split_table(self) -> list[tuple[str, str, str]]:
        """(patient_id, label name, split) for every usable patient."""
        return [
            (p.patient_id, self._label_name(None if p.label < 0 else p.label), self.assignment[p.patient_id])
            for p in self.patients
        ]

    def fingerprint_table(self) -> pd.DataFrame:
        """``patient_id`` and ``fingerprint_<modality>`` of every usable patient (see ``identity``)."""
        assert self.cached is not None
        table = fingerprint_table(self.cached.patient_ids, self.cached.fingerprints)
        return table[table["patient_id"].isin(self.assignment)].reset_index(drop=True)

    def splits_table(self) -> pd.DataFrame:
        """``patient_id, label, split`` and the image fingerprints of every usable patient."""
        labels = {pid: label for pid, label, _ in self.split_table()}
        return splits_frame(self.assignment, labels).merge(self.fingerprint_table(), on="patient_id", how="left")

    def write_splits(self, path: str | Path) -> None:
        """Write ``splits.csv`` for a run directory: who was where, and what their images were."""
        write_text(path, self.splits_table().to_csv(index=False, lineterminator="\n"))

    def summary(self) -> dict[str, Any]:
        """Counts a user wants to see after preparing a cohort."""
        assert self.cohort is not None and self.cached is not None
        per_class = Counter(
            self._label_name(None if p.label < 0 else p.label) or "unlabelled" for p in self.patients
        )
        split_counts = Counter(self.assignment.values())
        return {
            "root": str(self.cohort.root),
            "patients": len(self.patients),
            "patients_per_class": dict(sorted(per_class.items())),
            "skipped": len(self.skipped),
            "masks_found": int(sum(self.cached.has_mask)),
            "slices": int(sum(len(p.slices) for p in self.patients)),
            "slice_strategy": self.slice_spec.strategy,
            "plane": self.slice_spec.plane,
            "splits": {
                name: split_counts.get(name, 0) for name in (*SPLITS, "all") if split_counts.get(name)
            },
            "cache_path": str(self.cached.directory),
            "cache_bytes": self.cached.size_bytes(),
        }

    # ------------------------------------------------------------ dataloaders
    def _loader(self, split: str, train: bool) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("call setup() before asking for a DataLoader")
        if split not in self.datasets:
            if self.split_spec is None or set(self.assignment.values()) == {"all"}:
                why = "data.split is null" if self.split_spec is None else "the cohort has no labels"
                raise ConfigError(f"there is no {split} split: {why}, so every patient is in 'all'")
            raise ConfigError(
                f"the {split} split has no patient: data.split={self.split_spec} gives it none; "
                f"give data.split.{split} a share above 0"
            )
        dataset = self.datasets[split]
        if train and self.sampler == "weighted":
            counts = self.class_counts(split)
            weights = torch.as_tensor(1.0 / np.maximum(counts, 1), dtype=torch.double)[
                torch.from_numpy(dataset.labels)
            ]
            sampler = EpochWeightedSampler(weights, seed=self.seed)
        elif train:
            sampler = EpochShuffleSampler(len(dataset), seed=self.seed)
        else:
            sampler = SequentialSampler(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=train and len(dataset) > self.batch_size,
            collate_fn=identity_collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("all", train=False)

    def dataloader(self, split: str) -> DataLoader:
        """A sequential loader over any split, including ``all``."""
        return self._loader(split, train=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """On the device: cast to float32, then augment if training."""
        image = batch["image"]
        if image.dtype != torch.float32:
            image = cast(image, torch.float32)
        trainer = self.trainer
        if self._augmenter is not None and trainer is not None and trainer.training:
            if trainer.current_epoch != self._augment_epoch:
                self._augment_epoch = trainer.current_epoch
                self._augmenter.set_epoch(trainer.current_epoch)
            image = self._augmenter(image)
        batch["image"] = image
        return batch


def _has_entries(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())

"""LightningDataModule: a ``PreparedCohort`` (cohort -> cache -> patient split -> slice
selection) served as DataLoaders of ``[B, C, H, W]`` slices, augmented on the device.

With ``device_cache=True`` the train and val splits are instead copied once to the device the
module runs on and their batches indexed there (``device_cache``), in the order the DataLoaders
would give. Test and predict, one pass each, keep the DataLoader: a copy would cost that pass.

Batches are always built in the main process, whatever ``num_workers`` says: a worker process
must hand each batch over through fresh shared memory, which costs more than reading the batch
from the memory-mapped cache (``make bench`` measured two workers at an eighth to a twelfth
of one process).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from gliograde.data.batches.augment import BatchAugmenter
from gliograde.data.batches.crops import NO_MASK_RULE, input_channels
from gliograde.data.batches.dataset import SliceDataset, cast, identity_collate
from gliograde.data.batches.device_cache import DeviceBatches, DeviceSlices
from gliograde.data.batches.samplers import EpochShuffleSampler, EpochWeightedSampler
from gliograde.data.batches.splits import SPLITS, assert_disjoint
from gliograde.data.caching.reader import CachedCohort
from gliograde.data.discovery.cohort import Cohort
from gliograde.data.discovery.specs import (
    AugmentSpec,
    CropSpec,
    LabelSpec,
    LayoutSpec,
    PreprocessSpec,
    SliceSpec,
    SplitSpec,
    SyntheticSpec,
)
from gliograde.data.errors import DataError
from gliograde.data.pipeline import cohort_tables
from gliograde.data.pipeline.datasets import slice_dataset
from gliograde.data.pipeline.options import DataOptions
from gliograde.data.pipeline.prepared import PatientSlices, PreparedCohort
from gliograde.errors import ConfigError

log = logging.getLogger(__name__)



class GliomaDataModule(pl.LightningDataModule):
    """BraTS-style cohort to patient-split batches of ``[B, C, H, W]`` slices.

    Arguments mirror the ``data.*`` config (``conf/data/brats2020.yaml``; the defaults here
    match it); nested groups accept mappings (see ``specs``). ``split=None`` means no split at
    all: every usable patient goes to the ``all`` dataset, labelled or not (for evaluating or
    predicting on an external cohort). ``prepare_data`` (one process per node) generates the
    synthetic cohort if asked and builds the cache; ``setup`` reads the cache index, selects
    slices and splits patients. The work is ``PreparedCohort``'s; this class serves it to Lightning.
    """

    def __init__(
        self,
        root: str | Path,
        layout: Mapping[str, Any] | LayoutSpec | None = None,
        labels: Mapping[str, Any] | LabelSpec | None = None,
        cache_dir: str | Path = "data/cache",
        modalities: Sequence[str] = ("flair", "t1ce", "t1", "t2"),
        slices: Mapping[str, Any] | SliceSpec | None = None,
        crop: Mapping[str, Any] | CropSpec | None = None,
        context: int = 0,
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
        slab_margin: int = 2,
        device_cache: bool = False,
        seed: int = 0,
        progress: bool = True,
    ):
        super().__init__()
        self.options = DataOptions(
            root=root,
            layout=layout,
            labels=labels,
            cache_dir=cache_dir,
            modalities=modalities,
            slices=slices,
            crop=crop,
            context=context,
            split=split,
            folds=folds,
            fold=fold,
            sampler=sampler,
            augment=augment,
            preprocess=preprocess,
            synthetic=synthetic,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            on_error=on_error,
            require_labels=require_labels,
            transfer_dtype=transfer_dtype,
            slab_margin=slab_margin,
            device_cache=device_cache,
            seed=seed,
            progress=progress,
        )
        opts = self.options
        self.root = opts.root
        self.layout = opts.layout
        self.label_spec = opts.label_spec
        self.cache_dir = opts.cache_dir
        self.modalities = opts.modalities
        self.slice_spec = opts.slice_spec
        self.crop_spec = opts.crop_spec
        self.context = opts.context
        self.split_spec = opts.split_spec
        self.folds = opts.folds
        self.fold = opts.fold
        self.sampler = opts.sampler
        self.augment_spec = opts.augment_spec
        self.preprocess_spec = opts.preprocess_spec
        self.synthetic = opts.synthetic
        self.batch_size = opts.batch_size
        self.num_workers = opts.num_workers
        self.pin_memory = opts.pin_memory
        self.persistent_workers = opts.persistent_workers
        self.on_error = opts.on_error
        self.require_labels = opts.require_labels
        self.transfer_dtype = opts.transfer_dtype
        self.slab_margin = opts.slab_margin
        self.device_cache = opts.device_cache
        self.seed = opts.seed
        self.progress = opts.progress

        self.prepared = PreparedCohort(opts)
        self.datasets: dict[str, SliceDataset] = {}
        self.crop_rules: dict[str, str] = {}  # patient id -> how its crops were placed
        self._augmenter: BatchAugmenter | None = None
        self._augment_epoch = -1
        self._device_slices: dict[str, DeviceSlices] = {}
        self._said_main_process = False

    @property
    def num_channels(self) -> int:
        return input_channels(len(self.modalities), self.context)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.label_spec.classes

    # The prepared cohort's state, read where the DataModule was read before.
    @property
    def cohort(self) -> Cohort | None:
        return self.prepared.cohort

    @property
    def cached(self) -> CachedCohort | None:
        return self.prepared.cached

    @property
    def skipped(self) -> list[DataError]:
        return self.prepared.skipped

    @property
    def patients(self) -> list[PatientSlices]:
        return self.prepared.patients

    @property
    def assignment(self) -> dict[str, str]:
        return self.prepared.assignment

    @property
    def slice_rules(self) -> dict[str, str]:
        """Each selected patient's slice rule (``mask``, a mask-free strategy...; see ``mask_free``)."""
        return {p.patient_id: p.rule for p in self.prepared.patients}

    # ------------------------------------------------------------ preparation
    def keep_split(self, splits_csv: str | Path) -> None:
        """Use a resumed run's split (see ``PreparedCohort.keep_split``); before ``setup``."""
        self.prepared.keep_split(Path(splits_csv))

    def prepare_data(self) -> None:
        """Generate the synthetic cohort (if configured and absent) and build the cache."""
        self.prepared.load()

    def setup(self, stage: str | None = None) -> None:
        """Split patients, select their slices (see ``PreparedCohort.select``), and build the datasets."""
        if self.datasets:
            return
        self.prepared.select()
        assignment = self.assignment
        groups = {name: [p for p in self.patients if assignment[p.patient_id] == name] for name in SPLITS}
        groups["all"] = self.patients
        datasets = {name: self._dataset(group) for name, group in groups.items() if group}
        assert self.cached is not None
        assert_disjoint(
            [
                (self.cached.patient_ids[position], name)
                for name in SPLITS
                if name in datasets
                for position in np.unique(datasets[name].patient_positions)
            ]
        )
        self.datasets = datasets
        no_mask = [patient for patient, rule in self.crop_rules.items() if rule == NO_MASK_RULE]
        if no_mask:
            log.warning(
                "%d patient(s) have no tumour mask, so data.crop.mode=tumor centres their crops on "
                "the brain's box instead: %s",
                len(no_mask),
                ", ".join(no_mask),
            )
        if self.augment_spec.enabled:
            self._augmenter = BatchAugmenter(self.augment_spec, seed=self.seed)

    def _dataset(self, group: list[PatientSlices]) -> SliceDataset:
        assert self.cached is not None
        return slice_dataset(self.cached, self.options, group, self.crop_rules)

    # ---------------------------------------------------------------- tables
    def cohort_table(self) -> pd.DataFrame:
        """One row per patient found: id, label, modality and mask paths, and ``ok``/``skipped``."""
        return cohort_tables.cohort_table(self.prepared)

    def skipped_table(self) -> pd.DataFrame:
        """One row per problem that left a patient out: id, file and problem."""
        return cohort_tables.skipped_table(self.skipped)

    def split_table(self) -> list[tuple[str, str, str]]:
        """(patient_id, label name, split) for every usable patient."""
        return cohort_tables.split_table(self.prepared)

    def fingerprint_table(self) -> pd.DataFrame:
        """``patient_id`` and ``fingerprint_<modality>`` of every usable patient (see ``identity``)."""
        return cohort_tables.usable_fingerprints(self.prepared)

    def splits_table(self) -> pd.DataFrame:
        """``patient_id, label, split`` and the image fingerprints of every usable patient."""
        return cohort_tables.splits_table(self.prepared)

    def write_splits(self, path: str | Path) -> None:
        """Write ``splits.csv`` for a run directory: who was where, and what their images were."""
        cohort_tables.write_splits(self.prepared, path)

    def summary(self) -> dict[str, Any]:
        """Counts a user wants to see after preparing a cohort."""
        return cohort_tables.summary(self.prepared)

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

    # ------------------------------------------------------------ dataloaders
    def _dataset_of(self, split: str) -> SliceDataset:
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
        return self.datasets[split]

    def _sampler(self, split: str, labels: np.ndarray, train: bool) -> Any:
        """The order of rows with ``labels``: weighted or shuffled by (seed, epoch) when training."""
        if train and self.sampler == "weighted":
            counts = self.class_counts(split)
            per_class = torch.as_tensor(1.0 / np.maximum(counts, 1), dtype=torch.double)
            weights = per_class[torch.from_numpy(labels)]
            return EpochWeightedSampler(weights, seed=self.seed)
        if train:
            return EpochShuffleSampler(len(labels), seed=self.seed)
        return SequentialSampler(range(len(labels)))

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self._dataset_of(split)
        if self.num_workers and not self._said_main_process:
            self._said_main_process = True
            log.info(
                "data.num_workers=%d: batches are built in the main process all the same; a worker "
                "process would hand each batch over through shared memory, which costs more than "
                "reading it",
                self.num_workers,
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self._sampler(split, dataset.labels, train),
            drop_last=train and len(dataset) > self.batch_size,
            collate_fn=identity_collate,
            num_workers=0,  # see the module's docstring
            pin_memory=self.pin_memory,
        )

    def _device_batches(self, split: str, train: bool) -> DeviceBatches:
        """``split``'s batches indexed on the device the trainer runs on (the CPU without one).

        One process holds the whole split, and its batches are the DataLoader's, index for
        index. Under DDP each rank holds only its shard, the rows a ``DistributedSampler``
        without shuffling gives it (the DataLoader's val rows exactly); training shuffles within
        the shard each epoch, so each rank sees a fixed part of the split in a new order.
        """
        dataset = self._dataset_of(split)
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        world = trainer.world_size if trainer is not None else 1
        rows = np.arange(len(dataset))
        if world > 1:
            shard = DistributedSampler(rows, num_replicas=world, rank=trainer.global_rank, shuffle=False)
            rows = np.asarray(list(shard), dtype=np.int64)
        held = self._device_slices.get(split)
        if held is None or held.device != device or len(held) != len(rows):
            self._device_slices.pop(split, None)  # free the old copy before making a new one
            held = self._device_slices[split] = DeviceSlices(dataset, rows, device, split)
        if train and trainer is not None and trainer.overfit_batches:
            sampler: Any = SequentialSampler(range(len(rows)))  # as Lightning makes the DataLoader's
        else:
            sampler = self._sampler(split, held.labels, train)
        return DeviceBatches(held, sampler, self.batch_size, drop_last=train and len(rows) > self.batch_size)

    def teardown(self, stage: str) -> None:
        """Free the device copies at the end of a stage (fit copies them; test never does)."""
        self._device_slices.clear()

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        if self.device_cache:
            return self._device_batches("train", train=True)
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        if self.device_cache:
            return self._device_batches("val", train=False)
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


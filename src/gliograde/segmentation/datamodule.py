"""The segmenter's data: the classifier's DataModule (same cohort, cache, patient split and
slice selection), whose batches also carry each slice's whole-tumour mask from the mask store."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gliograde.data.discovery.cohort import discover_cohort
from gliograde.data.datamodule import GliomaDataModule
from gliograde.data.batches.dataset import SliceDataset, cast
from gliograde.data.pipeline.prepared import PatientSlices
from gliograde.data.synthetic.generator import ensure_cohort
from gliograde.errors import ConfigError
from gliograde.segmentation.masks import MaskStore, MaskStoreError, open_or_build_masks


class MaskedSliceDataset(Dataset):
    """A ``SliceDataset``'s rows whose batches add ``mask`` ``[B, 1, H, W]`` uint8 (1: tumour);
    every other attribute is the slice dataset's."""

    def __init__(self, slices: SliceDataset, masks: MaskStore):
        self.slices = slices
        self.masks = masks
        self._mask_rows: np.ndarray | None = None

    def __getattr__(self, name: str) -> Any:
        if name in ("slices", "masks", "_mask_rows"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.slices, name)

    def __getstate__(self) -> dict[str, Any]:
        return {"slices": self.slices, "masks": self.masks, "_mask_rows": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.batch([index])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        return self.batch(indices)

    def batch(self, indices) -> dict[str, Any]:
        """The slice dataset's batch of ``indices`` with their masks."""
        out = self.slices.batch(indices)
        if self._mask_rows is None:
            self._mask_rows = self.masks.rows()
        idx = np.asarray(indices, dtype=np.int64)
        masks = self.masks.read(self.slices.slots[idx], self.slices.slice_indices[idx], self._mask_rows)
        out["mask"] = torch.from_numpy(masks[:, None])
        return out


class SegmentationDataModule(GliomaDataModule):
    """``GliomaDataModule`` for ``task=segment``: axial, uncropped, unaugmented slices with their
    masks. Every usable patient needs a mask file (checked before the cache is built)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        opts = self.options
        refusals = [
            (opts.slice_spec.plane != "axial", f"data.slices.plane={opts.slice_spec.plane}", "axial"),
            (opts.crop_spec.mode != "none", f"data.crop.mode={opts.crop_spec.mode}", "none"),
            (opts.augment_spec.enabled, "data.augment.enabled=true", "false"),
            (opts.device_cache, "data.device_cache=true", "false"),
        ]
        for refused, given, wanted in refusals:
            if refused:
                raise ConfigError(
                    f"{given} is not available with task=segment (whole axial slices, their masks "
                    f"aligned): set {given.split('=')[0]}={wanted}"
                )
        self.masks: MaskStore | None = None

    def prepare_data(self) -> None:
        """Refuse patients without a mask file (before any decoding), then build the cache and
        the mask store."""
        opts = self.options
        if opts.synthetic is not None:
            ensure_cohort(opts.root, dataclasses.asdict(opts.synthetic), progress=opts.progress)
        cohort = discover_cohort(
            opts.root, opts.layout, opts.label_spec, opts.require_labels, opts.modalities
        )
        for record in cohort.patients:
            if record.mask is None:
                expected = record.folder / opts.layout.mask_file.format(id=record.patient_id)
                raise MaskStoreError(
                    f"{record.patient_id}: no tumour mask file ({expected}.nii or .nii.gz); task=segment "
                    "learns from masks: add it or remove the patient from the cohort"
                )
        super().prepare_data()
        open_or_build_masks(self.prepared)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.prepared.load()
        self.masks = open_or_build_masks(self.prepared)
        super().setup(stage)

    def _dataset(self, group: list[PatientSlices]) -> MaskedSliceDataset:  # type: ignore[override]
        assert self.masks is not None
        return MaskedSliceDataset(super()._dataset(group), self.masks)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """On the device: images to float32 (never augmented: the masks must stay aligned)."""
        if batch["image"].dtype != torch.float32:
            batch["image"] = cast(batch["image"], torch.float32)
        return batch

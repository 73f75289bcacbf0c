"""The ``data.*`` options, parsed and checked without importing torch.

``GliomaDataModule`` and ``python -m gliograde.prepare`` both read their options through
``DataOptions``, so a cohort prepared on its own gets the cache training will use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gliograde.data.caching.cache_box import SLAB_MARGIN
from gliograde.data.batches.slices import validate_slice_spec
from gliograde.data.discovery.specs import (
    MODALITIES,
    AugmentSpec,
    CropSpec,
    LabelSpec,
    LayoutSpec,
    PreprocessSpec,
    SliceSpec,
    SplitSpec,
    SyntheticSpec,
    from_mapping,
)
from gliograde.errors import ConfigError

ON_ERROR = ("raise", "skip")
SAMPLERS = ("random", "weighted")
TRANSFER_DTYPE_NAMES = ("float32", "float16")


class DataOptions:
    """Every ``data.*`` option as a checked value; nested groups become their specs.

    Takes the arguments ``GliomaDataModule`` takes, with the same defaults (those of
    ``conf/data/brats2020.yaml``), and refuses values that cannot work with a ``ConfigError``.
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
        slab_margin: int = SLAB_MARGIN,
        device_cache: bool = False,
        seed: int = 0,
        progress: bool = True,
    ):
        self.root = Path(root).expanduser()
        self.layout = from_mapping(LayoutSpec, layout, "data.layout")
        self.label_spec = from_mapping(LabelSpec, labels, "data.labels")
        self.cache_dir = Path(cache_dir).expanduser()
        self.modalities = tuple(modalities)
        self.slice_spec = from_mapping(SliceSpec, slices, "data.slices")
        self.crop_spec = from_mapping(CropSpec, crop, "data.crop")
        self.context = context
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
        self.slab_margin = slab_margin
        self.device_cache = device_cache
        self.seed = seed
        self.progress = progress
        check_options(self)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.label_spec.classes


def check_options(options: DataOptions) -> None:
    """Refuse option values, and combinations, that cannot work."""
    modalities = options.modalities
    if not modalities or len(set(modalities)) != len(modalities):
        raise ConfigError(f"data.modalities={list(modalities)} must be a non-empty list without repeats")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ConfigError(f"data.modalities: unknown {unknown}; choose from {list(MODALITIES)}")
    if options.on_error not in ON_ERROR:
        raise ConfigError(f"data.on_error={options.on_error!r} must be one of {list(ON_ERROR)}")
    if options.sampler not in SAMPLERS:
        raise ConfigError(f"data.sampler={options.sampler!r} must be one of {list(SAMPLERS)}")
    if options.transfer_dtype not in TRANSFER_DTYPE_NAMES:
        raise ConfigError(
            f"data.transfer_dtype={options.transfer_dtype!r} must be one of {list(TRANSFER_DTYPE_NAMES)}"
        )
    if options.slab_margin < 0:
        raise ConfigError(f"data.slab_margin={options.slab_margin} must be at least 0")
    if options.context < 0:
        raise ConfigError(f"data.context={options.context} must be at least 0 (0: the slice alone)")
    if not isinstance(options.device_cache, bool):
        raise ConfigError(f"data.device_cache={options.device_cache!r} must be true or false")
    if options.batch_size < 1:
        raise ConfigError(f"data.batch_size={options.batch_size} must be at least 1")
    folds, fold = options.folds, options.fold
    if folds is not None and folds < 2:
        raise ConfigError(f"data.folds={folds} must be at least 2 (or null)")
    if folds is not None and options.split_spec is None:
        raise ConfigError(f"data.folds={folds} needs a split: data.split is null (no split)")
    if fold is not None and folds is None:
        raise ConfigError(f"data.fold={fold} needs data.folds (e.g. data.folds=5)")
    if folds is not None and (fold is None or not 0 <= fold < folds):
        raise ConfigError(f"data.fold={fold} must be in 0..{folds - 1} when data.folds={folds}")
    validate_slice_spec(options.slice_spec)

"""``python -m gliograde.prepare [data=PRESET] [data.root=PATH] [data.*=...] [clean=true]``

Validates a cohort, builds its slice cache, and prints what was found. Takes the same
``data.*`` overrides as ``train.py``, so the cache it builds is the one training will use.
Every block of the cache's ``volumes.npy`` is checked against its crc32 (a damaged cache is
named and rebuilt). With ``clean=true`` it builds nothing: it removes that cohort's superseded
caches (built before its files or preprocessing settings changed, or by another cache format)
and abandoned partial builds from ``data.cache_dir``, keeping any a running process reads, and
prints what it removed and the bytes freed.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from gliograde.config.compose import build, checked_main
from gliograde.data.caching.cache import current_cache
from gliograde.data.caching.cache_clean import Removed, clean_cache_dir
from gliograde.data.caching.key import cohort_root
from gliograde.data.discovery.cohort import discover_cohort
from gliograde.data.errors import DataError
from gliograde.data.pipeline.cohort_tables import summary
from gliograde.data.pipeline.options import DataOptions
from gliograde.data.pipeline.prepared import PreparedCohort, slab_rule
from gliograde.errors import ConfigError, exit_on_user_error

DATAMODULE = "gliograde.data.datamodule.GliomaDataModule"
"""The ``data._target_`` whose options ``DataOptions`` reads without importing it (and torch)."""


def format_summary(summary: dict) -> str:
    """A readable block of the DataModule's summary."""
    size_gb = summary["cache_bytes"] / 1e9
    lines = [
        f"cohort        {summary['root']}",
        f"patients      {summary['patients']} ("
        + ", ".join(f"{name}: {n}" for name, n in summary["patients_per_class"].items())
        + ")",
        f"skipped       {summary['skipped']}",
        f"masks found   {summary['masks_found']}",
        f"slices        {summary['slices']} ({summary['slice_strategy']}, {summary['plane']})",
        "splits        " + ", ".join(f"{k}: {v}" for k, v in summary["splits"].items()),
        f"cache         {summary['cache_path']} ({size_gb:.2f} GB)",
    ]
    return "\n".join(lines)


def data_options(data: DictConfig) -> DataOptions:
    """The checked options of the ``data`` config node, read without building its DataModule."""
    target = data.get("_target_")
    if target != DATAMODULE:
        raise ConfigError(
            f"data._target_={target}: prepare reads the options of {DATAMODULE} only; "
            f"set data._target_={DATAMODULE} or prepare through that DataModule"
        )
    node = data.copy()
    node._target_ = "gliograde.data.pipeline.options.DataOptions"
    return build(node)


def run(cfg: DictConfig) -> dict:
    """Prepare the cohort of ``cfg.data`` (cache built, patients split, slices selected) and
    return its summary."""
    prepared = PreparedCohort(data_options(cfg.data), check="full")
    prepared.select()
    return summary(prepared)


def clean(cfg: DictConfig) -> tuple[Path, list[Removed]]:
    """Remove the superseded caches and abandoned builds of ``cfg.data``'s cohort.

    Returns the current cache's path (kept, built or not) and what was removed.
    """
    options = data_options(cfg.data)
    cohort = discover_cohort(
        options.root, options.layout, options.label_spec, options.require_labels, options.modalities
    )
    if not cohort.patients:
        raise DataError("no patients found, so the current cache is unknown", where=options.root)
    slab = slab_rule(options)
    labels = options.layout.mask_labels
    args = (cohort.patients, options.cache_dir, options.preprocess_spec, labels, slab, options.modalities)
    key, generation = current_cache(*args)
    removed = clean_cache_dir(options.cache_dir, key, cohort_root(cohort.patients), generation)
    return options.cache_dir / key, removed


def format_clean(current: Path, removed: list[Removed]) -> str:
    """One line per removed (or superseded but in use) folder, then the total freed."""
    lines = [
        f"{'kept' if r.in_use else 'removed':<13} {r.path} ({r.reason}, {r.bytes / 1e9:.2f} GB)"
        for r in removed
    ]
    gone = [r for r in removed if not r.in_use]
    freed = sum(r.bytes for r in gone)
    lines.append(f"freed         {freed} bytes ({freed / 1e9:.2f} GB) in {len(gone)} folder(s)")
    lines.append(f"current cache {current} ({'kept' if current.is_dir() else 'not built yet'})")
    return "\n".join(lines)


@checked_main("prepare")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        if cfg.get("clean", False):
            text = format_clean(*clean(cfg))
        else:
            text = format_summary(run(cfg))
    print(text)


if __name__ == "__main__":
    main()

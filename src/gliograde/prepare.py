"""``python -m gliograde.prepare [data=PRESET] [data.root=PATH] [data.*=...] [clean=true]``

Validates a cohort, builds its slice cache, and prints what was found. Takes the same
``data.*`` overrides as ``train.py``, so the cache it builds is the one training will use.
With ``clean=true`` it builds nothing: it removes that cohort's superseded caches (built
before its files or preprocessing settings changed) and abandoned partial builds from
``data.cache_dir``, and prints what it removed and the bytes freed.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from gliograde.config import build, checked_main
from gliograde.data.cache import cache_key, cohort_root
from gliograde.data.cache_clean import Removed, clean_cache_dir
from gliograde.data.cohort import discover_cohort
from gliograde.data.errors import DataError
from gliograde.errors import exit_on_user_error


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


def run(cfg: DictConfig) -> dict:
    """Prepare the cohort of ``cfg.data`` and return its summary."""
    datamodule = build(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule.summary()


def clean(cfg: DictConfig) -> tuple[Path, list[Removed]]:
    """Remove the superseded caches and abandoned builds of ``cfg.data``'s cohort.

    Returns the current cache's path (kept, built or not) and what was removed.
    """
    datamodule = build(cfg.data)
    cohort = discover_cohort(
        datamodule.root, datamodule.layout, datamodule.label_spec, datamodule.require_labels
    )
    if not cohort.patients:
        raise DataError("no patients found, so the current cache is unknown", where=datamodule.root)
    key = cache_key(cohort.patients, datamodule.preprocess_spec, datamodule.layout.mask_labels)
    removed = clean_cache_dir(datamodule.cache_dir, key, cohort_root(cohort.patients))
    return datamodule.cache_dir / key, removed


def format_clean(current: Path, removed: list[Removed]) -> str:
    """One line per removed folder, then the total freed."""
    lines = [f"removed       {r.path} ({r.reason}, {r.bytes / 1e9:.2f} GB)" for r in removed]
    freed = sum(r.bytes for r in removed)
    lines.append(f"freed         {freed} bytes ({freed / 1e9:.2f} GB) in {len(removed)} folder(s)")
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

"""``python -m gliograde.prepare [data=PRESET] [data.root=PATH] [data.*=...]``

Validates a cohort, builds its slice cache, and prints what was found. Takes the same
``data.*`` overrides as ``train.py``, so the cache it builds is the one training will use.
"""

from __future__ import annotations

from omegaconf import DictConfig

from gliograde.config import build, checked_main
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


@checked_main("prepare")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        summary = run(cfg)
    print(format_summary(summary))


if __name__ == "__main__":
    main()

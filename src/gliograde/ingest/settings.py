"""The ``ingest`` config node, read and checked once: where the template comes from, the series
rules, the quality thresholds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gliograde.data.discovery.specs import MODALITIES
from gliograde.errors import ConfigError
from gliograde.ingest.quality import DEFAULT_THRESHOLDS
from gliograde.ingest.series_rules import SeriesRules

SETTING_KEYS = ("enabled", "template", "reference", "n4", "brain_mask", "series", "qc")


@dataclass(frozen=True)
class IngestSettings:
    """What ``ingest.*`` says, checked."""

    rules: SeriesRules
    thresholds: dict[str, Any]
    template: Path | None = None
    reference: str = "t1ce"
    n4: bool = True
    brain_mask: str | None = None
    files: dict[str, str | None] = field(default_factory=dict)


def read_settings(node: DictConfig | Mapping[str, Any] | None, files: Mapping[str, str | None] | None = None) -> IngestSettings:
    """The checked settings of an ``ingest`` node (``files.<modality>=GLOB`` choose NIfTI files
    by name, over the series rules); a wrong key or value is one line naming it."""
    raw: dict[str, Any] = (
        OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    )  # type: ignore[assignment]
    unknown = sorted(set(raw) - set(SETTING_KEYS))
    if unknown:
        raise ConfigError(f"ingest.{unknown[0]}: unknown key; ingest takes {', '.join(SETTING_KEYS)}")
    reference = str(raw.get("reference") or "t1ce")
    if reference not in MODALITIES:
        raise ConfigError(f"ingest.reference={reference}: must be one of {list(MODALITIES)}")
    series = raw.get("series") or {}
    if not isinstance(series, Mapping):
        raise ConfigError("ingest.series must be a mapping: ingest.series.flair=['*FLAIR*', ...]")
    rules = SeriesRules.from_mapping(dict(series))
    qc = raw.get("qc") or {}
    if not isinstance(qc, Mapping):
        raise ConfigError("ingest.qc must be a mapping of thresholds, e.g. ingest.qc.min_template_ncc=0.6")
    unknown = sorted(set(qc) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise ConfigError(f"ingest.qc.{unknown[0]}: unknown; ingest.qc takes {', '.join(DEFAULT_THRESHOLDS)}")
    thresholds = {**DEFAULT_THRESHOLDS, **{k: v for k, v in qc.items() if v is not None}}
    template = raw.get("template")
    patterns = {k: v for k, v in dict(files or {}).items() if v}
    unknown = sorted(set(patterns) - set(MODALITIES))
    if unknown:
        raise ConfigError(f"files.{unknown[0]}: unknown; files.* takes {list(MODALITIES)}")
    return IngestSettings(
        rules=rules,
        thresholds=thresholds,
        template=None if not template else Path(str(template)).expanduser(),
        reference=reference,
        n4=bool(raw.get("n4", True)),
        brain_mask=raw.get("brain_mask") or None,
        files=patterns,
    )

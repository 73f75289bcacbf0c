"""Which modality a scan is, from its SeriesDescription, ProtocolName or NIfTI file name.

Rules are case-insensitive ``fnmatch`` globs per modality, matched against the whole text after
upper-casing it, turning ``_`` into spaces and collapsing runs of spaces (the same is done to
each glob). A glob starting with ``!`` excludes: a text matching any of a modality's ``!`` globs
is not that modality even if another of its globs matches ("T1 PRE CONTRAST" is not t1ce).
``skip`` globs are tried first (localisers, diffusion, perfusion...), then each modality in
``order``, the first that matches wins: with the default order flair, t1ce, t2, t1, "T2 FLAIR"
is flair and "T1 POST GD" is t1ce.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from gliograde.errors import ConfigError

MODALITIES = ("flair", "t1", "t1ce", "t2")
SKIP = "skip"

DEFAULT_SERIES: dict[str, list[str]] = {
    # Siemens "DARK-FLUID"/"TIRM", GE and Philips "FLAIR"; a GE "T1 FLAIR" is T1-weighted.
    "flair": ["*FLAIR*", "*DARK*FLUID*", "*TIRM*", "!*T1*FLAIR*"],
    "t1ce": ["*POST*", "*+C*", "*C+*", "*+ C*", "*GAD*", "*GD*", "*CONTRAST*", "*T1CE*", "*T1 CE*",
             "*T1C", "*T1C *", "*ENHANC*",
             "!*PRE", "!*PRE *", "!* PRE*CONTRAST*", "!*NON*CONTRAST*", "!*WITHOUT*", "!*W/O*",
             "!*FLAIR*", "!*T2*"],
    # A FLAIR is never T2 or T1ce, even when a narrower flair rule leaves it out.
    "t2": ["*T2*", "*T2W*", "!*FLAIR*"],
    "t1": ["*T1*", "*MPRAGE*", "*MP*RAGE*", "*SPGR*", "*BRAVO*", "*TFE*", "*T1W*", "!*T2*"],
    "skip": ["*LOCALI[SZ]ER*", "*LOCALIS*", "*SCOUT*", "*SURVEY*", "*3 PLANE*", "*3-PLANE*",
             "*TRI*PLANE*", "*CALIBRATION*", "*ASSET*CAL*", "*SENSE*REF*", "*REFSCAN*", "*ADC*",
             "*DWI*", "*DIFFUSION*", "*DTI*", "*TRACE*", "*TRACEW*", "*EP2D*", "*PERF*", "*DSC*",
             "*DCE*", "*PWI*", "*ASL*", "*BOLD*", "*FMRI*", "*MIP*", "*SWI*", "*SWAN*", "*T2[*]*",
             "*T2 STAR*", "*T2STAR*", "*TOF*", "*ANGIO*", "*SPECTRO*", "*SVS*", "*CSI*",
             "*SUBTRACT*", "*MOCO*", "*B0*MAP*", "*FIELD*MAP*"],
    "order": ["flair", "t1ce", "t2", "t1"],
}


def normalise(text: str) -> str:
    """Upper case, ``_`` as a space, runs of spaces as one, no spaces at the ends."""
    return re.sub(r"\s+", " ", str(text).upper().replace("_", " ")).strip()


@dataclass(frozen=True)
class SeriesRules:
    """Globs per modality, skip globs and the order in which modalities are tried."""

    rules: Mapping[str, tuple[str, ...]]
    skip: tuple[str, ...]
    order: tuple[str, ...]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None = None) -> SeriesRules:
        """Rules from a mapping like the config's ``ingest.series``; a key that is missing or
        ``None`` keeps :data:`DEFAULT_SERIES`'s value, a given key replaces it."""
        merged: dict[str, Any] = {k: list(v) for k, v in DEFAULT_SERIES.items()}
        for key, value in (mapping or {}).items():
            if key not in DEFAULT_SERIES:
                raise ConfigError(f"ingest.series.{key}: unknown key; use one of "
                                  f"{', '.join(DEFAULT_SERIES)}")
            if value is None:
                continue
            if isinstance(value, str) or not isinstance(value, Iterable) \
                    or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"ingest.series.{key}={value!r} must be a list of globs, "
                                  f"e.g. ingest.series.{key}=['*{key.upper()}*']")
            merged[key] = list(value)
        order = tuple(merged.pop("order"))
        if sorted(order) != sorted(MODALITIES):
            raise ConfigError(f"ingest.series.order={list(order)} must name each of "
                              f"{', '.join(MODALITIES)} once")
        skip = tuple(merged.pop("skip"))
        return cls(rules={m: tuple(merged[m]) for m in MODALITIES}, skip=skip, order=order)

    def _matches(self, globs: Sequence[str], texts: Sequence[str]) -> bool:
        include = [normalise(g) for g in globs if not g.startswith("!")]
        exclude = [normalise(g[1:]) for g in globs if g.startswith("!")]
        return any(
            any(fnmatchcase(t, g) for g in include) and not any(fnmatchcase(t, g) for g in exclude)
            for t in texts
        )

    def classify(self, *texts: str | None) -> str | None:
        """``"skip"``, the modality of the first rule in ``order`` matching any text, or None."""
        normal = [normalise(t) for t in texts if t]
        if not normal:
            return None
        if self._matches(self.skip, normal):
            return SKIP
        for modality in self.order:
            if self._matches(self.rules[modality], normal):
                return modality
        return None


DEFAULT_RULES = SeriesRules.from_mapping(None)

"""A run's stored temperature (``RUN/calibration.json``): what it belongs to, and when it applies.

evaluate.py writes it (``calibration=temperature``); predict.py and export read it. A temperature
belongs to one checkpoint (by content), one test-time augmentation and one patient aggregate: used
with anything else it would be silently wrong, so :func:`usable_temperature` refuses instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gliograde.atomic import write_text
from gliograde.errors import ConfigError

CALIBRATION_FILE = "calibration.json"
PREDICT_CALIBRATION = ("auto", "none")
PREDICT_AGGREGATE = "mean"  # predict.py averages a patient's slice probabilities


class StaleCalibrationError(ConfigError):
    """The stored temperature was fitted for another checkpoint, augmentation or aggregate."""


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (a checkpoint's identity: ``last.ckpt`` is rewritten in place)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_calibration(run: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``RUN/calibration.json`` atomically; return the path."""
    path = Path(run) / CALIBRATION_FILE
    write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_calibration(run: Path) -> dict[str, Any] | None:
    """``RUN/calibration.json``, or None when the run has none."""
    path = Path(run) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        float(record["temperature"])
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}: unreadable ({type(exc).__name__}); re-run evaluate.py calibration=temperature"
        ) from None
    return record


def stale_reason(record: dict[str, Any], checkpoint_sha256: str, tta: str, aggregate: str) -> str | None:
    """Why ``record`` does not apply to this checkpoint, TTA and aggregate; None when it does."""
    if record.get("checkpoint_sha256") != checkpoint_sha256:
        return f"it was fitted for another checkpoint ({record.get('checkpoint')})"
    if record.get("tta") != tta:
        return f"it was fitted with tta={record.get('tta')}, not tta={tta}"
    if record.get("aggregate") != aggregate:
        return f"it was fitted for aggregate={record.get('aggregate')}, not {aggregate}"
    return None


def check_calibration_mode(mode: str) -> None:
    """Refuse a ``calibration=`` value predict.py does not know."""
    if mode not in PREDICT_CALIBRATION:
        raise ConfigError(f"calibration={mode!r} must be one of {list(PREDICT_CALIBRATION)}")


def usable_temperature(
    record: dict[str, Any] | None, source: str, checkpoint_sha256: str, tta: str, mode: str
) -> dict[str, Any] | None:
    """predict.py's calibration: the record to apply, or None (``calibration=none`` or no record).

    ``auto`` applies a stored temperature that fits; one that does not is refused in one line,
    never dropped or applied silently.
    """
    check_calibration_mode(mode)
    if mode == "none" or record is None:
        return None
    reason = stale_reason(record, checkpoint_sha256, tta, PREDICT_AGGREGATE)
    if reason:
        raise StaleCalibrationError(
            f"{source}: the stored temperature does not apply: {reason}; re-run evaluate.py "
            f"calibration=temperature tta={tta} aggregate={PREDICT_AGGREGATE} on this checkpoint, "
            "or pass calibration=none"
        )
    return record

"""A run's stored temperature (``RUN/calibration.json``): what it belongs to, and when it applies.

evaluate.py writes it (``calibration=temperature``), sealed with a checksum of its content; the
run's recipe (:mod:`gliograde.inference.recipe`) says whether predict.py applies it, and export
copies it into the model card. A temperature belongs to one checkpoint (by content), one
test-time augmentation and one patient aggregate: :func:`stale_reason` says when it does not fit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from gliograde.errors import ConfigError
from gliograde.files.sealed import read_sealed, write_sealed

CALIBRATION_FILE = "calibration.json"
REFIT = "re-run evaluate.py calibration=temperature (with the tta and aggregate you use) to refit it"


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (a checkpoint's identity: ``last.ckpt`` is rewritten in place)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_calibration(run: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Seal ``record`` and write it to ``RUN/calibration.json`` atomically; return the sealed record."""
    return write_sealed(Path(run) / CALIBRATION_FILE, record)


def read_calibration(run: Path) -> dict[str, Any] | None:
    """``RUN/calibration.json``, checked against its checksum, or None when the run has none.
    Unreadable, unsealed or edited is one line (a :class:`~gliograde.files.sealed.SealError`)."""
    path = Path(run) / CALIBRATION_FILE
    if not path.is_file():
        return None
    record = read_sealed(path, REFIT)
    try:
        temperature = float(record["temperature"])
    except (KeyError, TypeError, ValueError):
        temperature = float("nan")
    if not temperature > 0:
        raise ConfigError(f"{path}: no positive temperature; {REFIT}")
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

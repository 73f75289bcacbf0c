"""JSON records that carry a checksum of their own content (``"sha256"``), written atomically.

A run's recipe, its stored temperature and an export's model card decide how patients are
graded long after they were written: an edited, truncated or half-written one must be refused,
never trusted. The checksum is over the canonical JSON of every other key, so a reader can tell
whether the content is the one its writer sealed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gliograde.files.atomic import write_text
from gliograde.errors import ConfigError

SEAL_KEY = "sha256"


class SealError(ConfigError):
    """A sealed record cannot be read, or its content is not the one it was written with."""


def content_sha256(record: dict[str, Any]) -> str:
    """The SHA-256 of ``record`` without its seal, as canonical JSON (sorted keys, no spaces)."""
    body = {key: value for key, value in record.items() if key != SEAL_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def seal(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its ``sha256`` (computed afresh: a stale seal is replaced)."""
    body = {key: value for key, value in record.items() if key != SEAL_KEY}
    return {**body, SEAL_KEY: content_sha256(body)}


def write_sealed(path: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Seal ``record`` and write it to ``path`` atomically; return the sealed record."""
    sealed = seal(record)
    write_text(path, json.dumps(sealed, indent=2) + "\n")
    return sealed


def check_sealed(record: Any, where: str, fix: str) -> dict[str, Any]:
    """``record`` when it is a dict whose seal matches its content; else one line naming ``where``
    and saying ``fix``."""
    if not isinstance(record, dict):
        raise SealError(f"{where}: not a JSON object; {fix}")
    stored = record.get(SEAL_KEY)
    if stored is None:
        raise SealError(f"{where}: has no {SEAL_KEY} of its content (written by an older gliograde); {fix}")
    try:
        actual = content_sha256(record)
    except (TypeError, ValueError):
        actual = None
    if stored != actual:
        raise SealError(f"{where}: its content does not match its {SEAL_KEY} (edited or damaged); {fix}")
    return record


def read_sealed(path: str | Path, fix: str) -> dict[str, Any]:
    """The sealed record at ``path``; unreadable, not JSON, unsealed or edited is one line
    ending with ``fix`` (what to do about it)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SealError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__}); {fix}") from None
    try:
        record = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, and bytes that are not UTF-8
        raise SealError(f"{path}: not valid JSON ({type(exc).__name__}); {fix}") from None
    return check_sealed(record, str(path), fix)

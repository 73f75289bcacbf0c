"""A cache's meta.json: what it was built from, and the record every open checks it against.

meta.json holds the size of each file the build wrote, the sha256 of the small ones, and a
checksum of itself; checking them costs a few stats and hashing a few MB, so it is done on
every open and a truncated or damaged cache is never used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gliograde.data.errors import DataError

# 4: modality codes and slice boxes; 5: a slab x block per patient; 6: boxes per modality;
# 7: the order fingerprints
CACHE_FORMAT = 7
META_FILE = "meta.json"
CHECKED_FILES = ("volumes.npy", "index.npz", "problems.csv")  # written by the build, checked on open
HASHED_FILES = ("index.npz", "problems.csv")  # small enough to checksum on every open


class DamagedCacheError(DataError):
    """A cache directory whose files disagree with its meta.json; ``where`` names the file."""


def write_meta(directory: Path, meta: dict) -> None:
    """Write ``meta`` plus the sizes and checksums of the files already in ``directory``."""
    meta = dict(meta, format=CACHE_FORMAT)
    meta["files"] = {
        name: {"bytes": (directory / name).stat().st_size}
        | ({"sha256": _sha256(directory / name)} if name in HASHED_FILES else {})
        for name in CHECKED_FILES
    }
    meta["checksum"] = _meta_checksum(meta)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))


def read_meta(directory: Path) -> dict:
    """A cache's meta.json, checked against its own checksum (raises DamagedCacheError)."""
    path = directory / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedCacheError("damaged cache: file missing", where=path) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedCacheError(f"damaged cache: unreadable ({type(exc).__name__})", where=path) from None
    if not isinstance(meta, dict) or meta.get("checksum") != _meta_checksum(meta):
        raise DamagedCacheError("damaged cache: checksum mismatch", where=path)
    if meta.get("format") != CACHE_FORMAT:
        raise DamagedCacheError(
            f"cache format {meta.get('format')} is not this version's {CACHE_FORMAT}", where=path
        )
    return meta


def verify_cache(directory: Path) -> dict:
    """Check every file's size (and the small files' sha256) against meta.json; return meta.

    Raises DamagedCacheError naming the first file that disagrees.
    """
    meta = read_meta(directory)
    for name, expected in meta["files"].items():
        path = directory / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise DamagedCacheError("damaged cache: file missing", where=path) from None
        if size != expected["bytes"]:
            raise DamagedCacheError(
                f"damaged cache: {size} bytes, meta.json records {expected['bytes']}", where=path
            )
        if "sha256" in expected and _sha256(path) != expected["sha256"]:
            raise DamagedCacheError("damaged cache: checksum mismatch", where=path)
    return meta


def _meta_checksum(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

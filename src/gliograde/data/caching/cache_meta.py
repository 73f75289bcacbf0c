"""A cache's meta.json: what it was built from, and the record every open checks it against.

meta.json holds the size of each file the build wrote, the sha256 of the small ones, a crc32
of every block of ``volumes.npy`` (its array header, then each patient's stored slices), and a
checksum of itself. Every open checks the sizes and the small files (a few stats, a few MB of
hashing), and the blocks of volumes.npy either all (``full``) or a few chosen at random
(``sample``). ``auto`` checks all of them when volumes.npy is not the file the last full check
read (``verified.json`` records its size, mtime, ctime, inode and device then: a write in
place changes the ctime even when the mtime is put back, a copy changes the inode), and a
sample otherwise. A truncated or damaged cache is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import random
import time
import zlib
from pathlib import Path

from gliograde.files.atomic import write_text
from gliograde.data.errors import DataError

log = logging.getLogger(__name__)

# 4: modality codes and slice boxes; 5: a slab x block per patient; 6: boxes per modality;
# 7: crc32 per block of volumes.npy; 8: the order fingerprints
CACHE_FORMAT = 8
META_FILE = "meta.json"
VOLUMES_FILE = "volumes.npy"
VERIFIED_FILE = "verified.json"  # volumes.npy's stat when every block last matched
CHECKED_FILES = (VOLUMES_FILE, "index.npz", "problems.csv")  # written by the build, checked on open
HASHED_FILES = ("index.npz", "problems.csv")  # small enough to checksum on every open
CHECKS = ("auto", "full", "sample")
SAMPLED_BLOCKS = 4  # patients' blocks a sampled check reads, besides the array header
_CHUNK = 1 << 24

Block = tuple[int, int, int, str]  # offset, bytes, crc32, what it holds ("header" or a patient id)


class DamagedCacheError(DataError):
    """A cache directory whose files disagree with its meta.json; ``where`` names the file."""


def crc32_block(offset: int, data: memoryview | bytes, owner: str) -> Block:
    """The record of one block of volumes.npy that the build writes at ``offset``."""
    view = memoryview(data)
    return (offset, view.nbytes, zlib.crc32(view), owner)


def write_meta(directory: Path, meta: dict, volume_blocks: list[Block]) -> None:
    """Write ``meta`` plus the sizes and checksums of the files already in ``directory``, the
    crc32 of every block of volumes.npy (``volume_blocks``, which must cover the file), and a
    ``verified.json`` for volumes.npy as it is now (its blocks were hashed as they were written)."""
    meta = dict(meta, format=CACHE_FORMAT)
    meta["files"] = {
        name: {"bytes": (directory / name).stat().st_size}
        | ({"sha256": _sha256(directory / name)} if name in HASHED_FILES else {})
        for name in CHECKED_FILES
    }
    blocks = [list(block) for block in volume_blocks]
    _check_cover(blocks, meta["files"][VOLUMES_FILE]["bytes"], directory / META_FILE)
    meta["files"][VOLUMES_FILE]["crc32_blocks"] = blocks
    meta["checksum"] = _meta_checksum(meta)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    _record_verified(directory)


def read_meta(directory: Path, any_format: bool = False) -> dict:
    """A cache's meta.json, checked against its own checksum (raises DamagedCacheError); one
    of another format is refused unless ``any_format``."""
    path = directory / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedCacheError("damaged cache: file missing", where=path) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedCacheError(f"damaged cache: unreadable ({type(exc).__name__})", where=path) from None
    if not isinstance(meta, dict) or meta.get("checksum") != _meta_checksum(meta):
        raise DamagedCacheError("damaged cache: checksum mismatch", where=path)
    if meta.get("format") != CACHE_FORMAT and not any_format:
        raise DamagedCacheError(
            f"cache format {meta.get('format')} is not this version's {CACHE_FORMAT}", where=path
        )
    return meta


def verify_cache(directory: Path, check: str = "auto") -> dict:
    """Check every file's size, the small files' sha256 and the blocks of volumes.npy that
    ``check`` says (``full``: all, ``sample``: the header and a few patients' at random,
    ``auto``: all when volumes.npy changed since its last full check) against meta.json;
    return meta.

    Raises DamagedCacheError naming the first file (and patient) that disagrees.
    """
    if check not in CHECKS:
        raise ValueError(f"check={check!r} is not one of {CHECKS}")
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
    blocks = meta["files"][VOLUMES_FILE]["crc32_blocks"]
    if check == "auto":
        check = "sample" if _verified_is_current(directory) else "full"
    if check == "full":
        started = time.perf_counter()
        check_blocks(directory / VOLUMES_FILE, blocks)
        log.info(
            "Checked every block of %s (%.2f GB) in %.1f s",
            directory / VOLUMES_FILE,
            meta["files"][VOLUMES_FILE]["bytes"] / 1e9,
            time.perf_counter() - started,
        )
        _record_verified(directory)
    else:
        patients = blocks[1:]
        chosen = random.Random().sample(patients, min(SAMPLED_BLOCKS, len(patients)))
        check_blocks(directory / VOLUMES_FILE, blocks[:1] + chosen)
    return meta


def check_blocks(path: Path, blocks: list) -> None:
    """Read each ``[offset, bytes, crc32, owner]`` block of ``path`` and compare its crc32;
    DamagedCacheError naming the first that differs (and whose slices it holds)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)  # read in place: no copy through a buffer
        try:
            for offset, length, expected, owner in sorted(blocks):
                if offset + length > len(view):
                    raise DamagedCacheError(f"damaged cache: ends inside the block of {owner}", where=path)
                crc = 0
                for start in range(offset, offset + length, _CHUNK):
                    crc = zlib.crc32(view[start : min(start + _CHUNK, offset + length)], crc)
                if crc != expected:
                    what = "its array header" if owner == "header" else f"patient {owner}'s stored slices"
                    raise DamagedCacheError(
                        f"damaged cache: {what} (bytes {offset} to {offset + length}) do not match "
                        "the crc32 meta.json records",
                        where=path,
                    )
        finally:
            view.release()


def _check_cover(blocks: list, size: int, where: Path) -> None:
    """The blocks must tile the file, header first: a gap would go unchecked."""
    end = 0
    for offset, length, _, _ in blocks:
        if offset != end:
            raise ValueError(f"{where}: volume blocks leave bytes {end} to {offset} unchecked")
        end += length
    if end != size or not blocks or blocks[0][3] != "header":
        raise ValueError(f"{where}: volume blocks cover {end} of {size} bytes")


def _volumes_stat(directory: Path) -> list[int]:
    st = (directory / VOLUMES_FILE).stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _verified_is_current(directory: Path) -> bool:
    """Whether volumes.npy is the very file whose blocks all matched last (see the module)."""
    try:
        recorded = json.loads((directory / VERIFIED_FILE).read_text())
        return recorded.get(VOLUMES_FILE) == _volumes_stat(directory)
    except (OSError, ValueError, AttributeError):
        return False


def _record_verified(directory: Path) -> None:
    """Record volumes.npy's stat after a full check; a read-only cache is checked fully again."""
    if not may_record(directory):
        return
    try:
        write_text(directory / VERIFIED_FILE, json.dumps({VOLUMES_FILE: _volumes_stat(directory)}))
    except OSError as exc:
        log.info("Cannot record the full check of %s (%s): the next open checks fully again", directory, exc)


def may_record(directory: Path) -> bool:
    """Whether a full check may be recorded in ``directory`` (a writable one)."""
    return os.access(directory, os.W_OK)


def _meta_checksum(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

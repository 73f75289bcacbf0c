"""Checkpoints written whole or not at all: a run killed while saving keeps its previous
``last.ckpt`` intact, so it can always be resumed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pytorch_lightning.plugins.io import TorchCheckpointIO

from gliograde.errors import GliogradeError


class CheckpointWriteError(GliogradeError):
    """A checkpoint cannot be written (full disk, read-only or vanished directory)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary sibling, then rename over the target."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, target)
        except OSError as exc:
            raise CheckpointWriteError(f"{target}: cannot write the checkpoint ({exc.strerror or exc})") from exc
        finally:
            tmp.unlink(missing_ok=True)


def share_if_same(best: str | os.PathLike, last: str | os.PathLike) -> bool:
    """Make ``best`` a second name of ``last`` (a hard link: one file on disk) when both hold the
    same training state (the same epoch and step: the best epoch was the last); True if done.

    Safe for what this project writes: checkpoints are replaced by rename, never rewritten in
    place, so saving ``last`` again later leaves ``best`` as it was. A file system without hard
    links keeps both files."""
    import torch

    best, last = Path(best), Path(last)
    if not (best.is_file() and last.is_file()) or best.samefile(last):
        return False

    def state(path: Path) -> tuple[Any, Any]:
        # the tensors are mapped, not read
        stored = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return stored.get("epoch"), stored.get("global_step")

    if state(best) != state(last):
        return False
    tmp = best.with_name(f".{best.name}.link-{os.getpid()}")
    try:
        os.link(last, tmp)
        os.replace(tmp, best)
    except OSError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True

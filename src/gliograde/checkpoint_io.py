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

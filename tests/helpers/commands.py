"""Running the project's commands as a user types them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root, as a user types it, with its output captured."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, encoding="utf-8", timeout=timeout
    )

"""GPU requests in the trainer config, and a look for GPUs cheap enough to make before torch is
imported, so that asking for a GPU on a machine without one is refused at once."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gliograde.errors import GliogradeError

# Device files and loaded drivers of CUDA (NVIDIA), ROCm (AMD) and CUDA under WSL2.
_GPU_TRACES = (
    "dev/nvidia[0-9]*",
    "dev/nvidiactl",
    "dev/kfd",
    "dev/dxg",
    "proc/driver/nvidia",
    "sys/module/nvidia",
    "sys/module/amdgpu",
)
# PCI vendors whose display controllers CUDA or ROCm can drive: NVIDIA, AMD (ATI) graphics.
_GPU_VENDORS = ("0x10de", "0x1002")
_DISPLAY_CLASS = "0x03"
# Hydra launchers that run a sweep's jobs on this machine (a single run always runs here).
_LOCAL_LAUNCHERS = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
)


class NoGPUError(GliogradeError):
    """A GPU was asked for on a machine without one."""


def no_gpu_here(root: Path = Path("/")) -> bool:
    """True only where there is certainly no GPU for torch: Linux without a GPU device file, a
    GPU driver loaded, or an NVIDIA or AMD display controller on the PCI bus (a driver that
    loads on first use is still found by its card). Anywhere else, and in doubt, False: then
    torch decides, later. ``root`` is the file system's root (tests give a fake one)."""
    if not sys.platform.startswith("linux"):
        return False
    if any(any(root.glob(pattern)) for pattern in _GPU_TRACES):
        return False
    for device in (root / "sys/bus/pci/devices").glob("*"):
        vendor, kind = _read(device / "vendor"), _read(device / "class")
        if vendor in _GPU_VENDORS and kind.startswith(_DISPLAY_CLASS):
            return False
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text().strip().lower()
    except OSError:
        return ""


def gpu_refusal(trainer: Mapping[str, Any], gpu_count: int, why: str) -> str | None:
    """Why the ``trainer`` options cannot run on a machine with ``gpu_count`` GPUs (``why``
    says how that count is known), as one line; None when they can.

    A GPU is asked for by ``gpus=N`` (N > 0), ``accelerator=gpu`` or ``cuda``, or a DDP
    strategy on the ``auto`` accelerator, which would otherwise fall back to CPU processes.
    """
    if gpu_count > 0:
        return None
    gpus = trainer.get("gpus")
    accelerator = trainer.get("accelerator")
    if gpus not in (None, 0, "0"):
        return (
            f"trainer.gpus={gpus} asks for a GPU, but no GPU is available ({why}). "
            "Run on the CPU with trainer=cpu (or drop trainer.gpus)."
        )
    if accelerator in ("gpu", "cuda"):
        return (
            f"trainer.accelerator={accelerator}, but no GPU is available ({why}). "
            "Run on the CPU with trainer=cpu."
        )
    strategy = str(trainer.get("strategy") or "")
    if strategy.startswith("ddp") and accelerator in (None, "auto"):
        # "auto" would fall back to one CPU process per device, which nobody wants by accident.
        return (
            f"trainer.strategy={strategy} with trainer.devices={trainer.get('devices')} asks for GPUs, "
            f"but no GPU is available ({why}). "
            "Add trainer.accelerator=cpu for CPU processes, or run on the CPU with trainer=cpu."
        )
    return None


def refuse_gpu_request_without_gpu(cfg: DictConfig, multirun: bool = False, root: Path = Path("/")) -> None:
    """Raise :class:`NoGPUError` when the composed ``cfg`` (with its ``hydra`` node) asks for a
    GPU for jobs that run on this machine, and :func:`no_gpu_here`. Torch-free, for the
    command-line check before any heavy import. Sweeps sent elsewhere (SLURM) and values that
    cannot be resolved yet are left to the check in each job."""
    if multirun and OmegaConf.select(cfg, "hydra.launcher._target_", default=None) not in _LOCAL_LAUNCHERS:
        return
    if not no_gpu_here(root):
        return
    options = {
        key: OmegaConf.select(cfg, f"trainer.{key}", throw_on_resolution_failure=False)
        for key in ("gpus", "accelerator", "strategy", "devices")
    }
    reason = gpu_refusal(options, 0, "no GPU device or driver on this machine")
    if reason:
        raise NoGPUError(reason)

"""Asking for a GPU where there is none: found by a cheap look at the machine before torch is
imported, and refused in one line within a second or two."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.commands import REPO
from helpers.configs import compose_config

from gliograde.config import gpu_check
from gliograde.config.compose import check_command_line
from gliograde.config.gpu_check import NoGPUError, gpu_refusal, no_gpu_here, refuse_gpu_request_without_gpu


def _machine(root: Path, *files: str, pci: dict[str, tuple[str, str]] | None = None) -> Path:
    """A fake file system root holding ``files`` and PCI devices ``{slot: (vendor, class)}``."""
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    for slot, (vendor, kind) in (pci or {}).items():
        device = root / "sys/bus/pci/devices" / slot
        device.mkdir(parents=True)
        (device / "vendor").write_text(vendor + "\n")
        (device / "class").write_text(kind + "\n")
    return root


@pytest.fixture
def on_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")


def test_a_machine_without_gpu_traces_has_no_gpu(tmp_path, on_linux):
    # a virtual machine's bus: host bridge, virtio devices (what this project's CPU machines show)
    bus = {"0000:00:00.0": ("0x8086", "0x060000"), "0000:00:03.0": ("0x1af4", "0x020000")}
    assert no_gpu_here(_machine(tmp_path, "dev/null", "dev/tty0", pci=bus))
    # an NVIDIA device that is not a display controller (a network card) is no GPU either
    assert no_gpu_here(_machine(tmp_path / "nic", pci={"0000:01:00.0": ("0x10de", "0x020000")}))


@pytest.mark.parametrize(
    "trace",
    [
        "dev/nvidia0",
        "dev/nvidiactl",
        "dev/kfd",
        "dev/dxg",
        "proc/driver/nvidia/version",
        "sys/module/amdgpu/refcnt",
    ],
)
def test_a_gpu_device_file_or_driver_means_torch_decides(tmp_path, on_linux, trace):
    assert not no_gpu_here(_machine(tmp_path, trace))


@pytest.mark.parametrize("vendor", ["0x10de", "0x1002"])  # NVIDIA, AMD graphics
def test_a_gpu_card_without_a_loaded_driver_means_torch_decides(tmp_path, on_linux, vendor):
    # the driver may load on first use (nvidia-modprobe): the card on the bus is enough
    assert not no_gpu_here(_machine(tmp_path, pci={"0000:01:00.0": (vendor, "0x030200")}))


def test_other_systems_leave_it_to_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")  # Apple GPUs have no device files to look for
    assert not no_gpu_here(_machine(tmp_path))


@pytest.mark.parametrize(
    "options, refused",
    [
        ({"gpus": 1}, "trainer.gpus=1 asks for a GPU, but no GPU is available (WHY). Run on the CPU with"),
        ({"gpus": 0}, None),
        ({"gpus": None, "accelerator": "gpu"}, "trainer.accelerator=gpu, but no GPU is available (WHY)"),
        ({"accelerator": "cuda"}, "trainer.accelerator=cuda, but no GPU is available (WHY)"),
        ({"strategy": "ddp", "devices": 4}, "trainer.strategy=ddp with trainer.devices=4 asks for GPUs"),
        ({"accelerator": "cpu", "strategy": "ddp", "devices": 4}, None),
        ({"accelerator": "auto", "devices": "auto"}, None),
    ],
)
def test_what_asks_for_a_gpu(options, refused):
    reason = gpu_refusal(options, 0, "WHY")
    assert reason is None if refused is None else reason.startswith(refused)
    assert gpu_refusal(options, 1, "WHY") is None


def test_the_command_line_check_reads_the_composed_trainer(tmp_path, on_linux):
    empty = _machine(tmp_path / "cpu_only")
    gpu = compose_config("train", ["trainer=gpu"], hydra_node=True)
    no_gpu = r"^trainer.accelerator=gpu, .*\(no GPU device or driver on this machine\)"
    with pytest.raises(NoGPUError, match=no_gpu):
        refuse_gpu_request_without_gpu(gpu, root=empty)
    refuse_gpu_request_without_gpu(compose_config("train", ["trainer=cpu"], hydra_node=True), root=empty)
    refuse_gpu_request_without_gpu(gpu, root=_machine(tmp_path / "gpu", "dev/nvidia0"))
    # a value that cannot be resolved yet is left to the check after torch is imported
    unresolved = compose_config("train", ["trainer.gpus=${oc.env:GLIOGRADE_UNSET_VARIABLE}"], hydra_node=True)
    refuse_gpu_request_without_gpu(unresolved, root=empty)


def test_sweeps_sent_to_a_cluster_are_left_to_their_jobs(tmp_path, on_linux):
    empty = _machine(tmp_path)
    slurm = compose_config("train", ["trainer=gpu", "hydra/launcher=slurm"], hydra_node=True)
    refuse_gpu_request_without_gpu(slurm, multirun=True, root=empty)  # the jobs run on GPU nodes
    with pytest.raises(NoGPUError):
        refuse_gpu_request_without_gpu(slurm, multirun=False, root=empty)  # a single run runs here
    parallel = compose_config("train", ["trainer=gpu", "hydra/launcher=parallel"], hydra_node=True)
    with pytest.raises(NoGPUError):
        refuse_gpu_request_without_gpu(parallel, multirun=True, root=empty)


def test_check_command_line_refuses_only_what_would_run_here(monkeypatch):
    monkeypatch.setattr(gpu_check, "no_gpu_here", lambda root=None: True)
    with pytest.raises(NoGPUError, match="^trainer.gpus=1 asks for a GPU"):
        check_command_line("train", ["trainer.gpus=1"])
    with pytest.raises(NoGPUError, match="^trainer.strategy=ddp with trainer.devices=4"):
        check_command_line("train", ["-m", "trainer=ddp", "trainer.devices=4", "model=resnet18,resnet34"])
    check_command_line("train", ["-m", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"])
    check_command_line("train", ["--cfg", "job", "trainer.gpus=1"])  # prints the config, runs nothing
    check_command_line("train", ["trainer=cpu"])
    monkeypatch.setattr(gpu_check, "no_gpu_here", lambda root=None: False)
    check_command_line("train", ["trainer.gpus=1"])  # torch decides, in the job


@pytest.mark.slow  # a real command line
def test_gpus_on_a_machine_without_one_is_refused_before_torch_is_imported(tmp_path):
    if not no_gpu_here():
        pytest.skip("this machine may have a GPU")
    run_dir = tmp_path / "run"
    started, before = time.monotonic(), os.times()
    result = subprocess.run(
        [sys.executable, "train.py", "trainer.gpus=1", f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    after, wall = os.times(), time.monotonic() - started
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: trainer.gpus=1 asks for a GPU, but no GPU is available (no GPU device or driver on this "
        "machine). Run on the CPU with trainer=cpu (or drop trainer.gpus)."
    ]
    assert result.stdout == "" and not run_dir.exists()
    # Importing torch and Lightning alone costs several seconds of CPU; the check needs about 0.7 s.
    # The wall-clock bound is loose: the machine may be shared.
    assert cpu < 2.5, cpu
    assert wall < 20, wall


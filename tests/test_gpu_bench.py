"""The GPU benchmark's command, in its tiny CPU version, so that it cannot rot."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from helpers.commands import REPO

from benchmarks.gpu_bench import NO_COMPILE_ON_CPU, PRECISIONS

FIGURES = (
    "model_only_samples_per_s",
    "model_only_first_step_s",
    "fit_loader_samples_per_s",
    "fit_loader_first_step_s",
    "fit_device_cache_samples_per_s",
    "fit_device_cache_first_step_s",
    "ratio_loader",
    "ratio_device_cache",
)


@pytest.mark.slow  # end to end: real commands
def test_the_gpu_bench_runs_in_its_tiny_cpu_version(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, "-m", "benchmarks.bench", "--gpu", "--tiny", "--out", str(out)]
    command += ["--workdir", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, check=False, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["mode"] == "tiny" and record["measured_on_gpu"] is False and record["device"] == "cpu"
    assert record["compile"] == NO_COMPILE_ON_CPU and record["peak_mb"] is None
    combinations = {(r["precision"], r["channels_last"], r["compile"]) for r in record["runs"]}
    assert combinations == {(p, c, False) for p in PRECISIONS for c in (False, True)}
    for row in record["runs"]:
        for key in FIGURES:
            assert math.isfinite(row[key]) and row[key] > 0, (row, key)
        model_only = row["model_only_samples_per_s"]
        assert row["ratio_device_cache"] == row["fit_device_cache_samples_per_s"] / model_only
    assert "bf16-mixed" in done.stdout and "not judged" in done.stdout  # the table
    assert [p.name for p in tmp_path.iterdir()] == ["gpu.json"]  # cohort and cache removed

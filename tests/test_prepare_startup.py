"""``python -m gliograde.prepare`` runs without importing torch or any other heavy library."""

from __future__ import annotations

import json

import pytest
from helpers.commands import run_python

HEAVY = (
    "torch",
    "pytorch_lightning",
    "lightning",
    "torchvision",
    "torchmetrics",
    "monai",
    "captum",
    "matplotlib",
)

# Runs the command as ``python -m`` does, then reports which heavy top-level modules were imported.
PROBE = """
import json, runpy, sys
sys.argv = ["prepare", *sys.argv[1:]]
try:
    runpy.run_module("gliograde.prepare", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
else:
    code = 0
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(%r))
print("PROBE " + json.dumps({"code": code, "heavy": heavy}))
""" % (HEAVY,)


def _probe(*overrides: str) -> tuple[dict, str]:
    result = run_python("-c", PROBE, *overrides, timeout=300)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("PROBE "), result.stdout + result.stderr
    return json.loads(last[len("PROBE ") :]), result.stdout


@pytest.mark.slow  # a few seconds: kept out of the fast suite's 90 s
@pytest.mark.parametrize("clean", [False, True])
def test_prepare_imports_no_heavy_library(tiny_cohort_master, tmp_path, clean):
    common = [
        "data=brats2020",
        f"data.root={tiny_cohort_master}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.preprocess.workers=1",
        "data.progress=false",
    ]
    report, out = _probe(*common)  # builds the cache
    assert report == {"code": 0, "heavy": []}
    assert "patients      24 (HGG: 16, LGG: 8)" in out and "splits        train: 16, val: 4, test: 4" in out
    report, out = _probe(*common, *(["clean=true"] if clean else []))  # the cache is there now
    assert report == {"code": 0, "heavy": []}
    assert ("current cache" in out) if clean else ("patients      24" in out)


def test_prepare_refuses_an_unknown_datamodule_in_one_line(tmp_path):
    result = run_python(
        "-m",
        "gliograde.prepare",
        "data=brats2020",
        f"data.root={tmp_path}",
        "data._target_=mypackage.MyDataModule",
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data._target_=mypackage.MyDataModule" in lines[0], result.stderr

"""What a user sees at the command line: quick answers to typos, no debris from refused runs,
warnings for overrides that do nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.commands import REPO, run_python
from hydra import compose, initialize_config_dir

from gliograde.config.compose import CONF_DIR
from gliograde.config.overrides import ineffective_overrides


def test_a_typo_is_answered_without_importing_torch():
    code = (
        "import sys\n"
        "from gliograde.config.compose import check_command_line\n"
        "from gliograde.errors import ConfigError\n"
        "try:\n"
        "    check_command_line('train', ['data.batch_size=abc'])\n"
        "except ConfigError as err:\n"
        "    print(err)\n"
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'torchvision', 'monai') if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "data.batch_size='abc' must be an integer" in result.stdout
    assert "heavy: []" in result.stdout


@pytest.mark.slow  # end to end: real commands
@pytest.mark.parametrize(
    "override",
    ["trainer.max_epochs=abc", "data.root=/nonexistent/cohort"],  # a deep check; a data error
)
def test_a_refused_training_leaves_no_run_directory(tmp_path, override):
    run_dir = tmp_path / "runs" / "refused"
    result = run_python("train.py", "data=brats2020", "data.root=/nonexistent/cohort", override,
                        f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not run_dir.exists()


def _compose(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_slice_options_the_strategy_does_not_read_are_reported():
    cfg = _compose("experiment=article", "data.slices.k=5", "data.slices.min_area=3")
    [note] = ineffective_overrides(cfg, ["data.slices.k=5", "data.slices.min_area=3"])
    assert note.startswith("warning: data.slices.k=5 has no effect with data.slices.strategy=tumor_all")
    cfg = _compose("data.slices.k=5")
    assert ineffective_overrides(cfg, ["data.slices.k=5"]) == []

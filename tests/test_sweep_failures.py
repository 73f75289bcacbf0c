"""A sweep's failed jobs: recorded, reported at the end, and never the end of the sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.commands import run_python
from helpers.runs import debug_sweep_args
from omegaconf import OmegaConf

from gliograde.data.synthetic.generator import generate_cohort
from gliograde.errors import ConfigError, exit_on_user_error
from gliograde.sweeps.jobs import (
    FAILED_MARKER,
    failures,
    last_trial_of_failed_study,
    read_failure,
    report,
    run_sweep_job,
)


BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _hydra_cfg(sweep: Path, num: int, sweeper: str = BASIC):
    """The parts of a job's HydraConfig that a sweep job reads."""
    return OmegaConf.create(
        {
            "runtime": {"output_dir": str(sweep / str(num))},
            "job": {"num": num},
            "sweeper": {"_target_": sweeper, "n_trials": 3},
        }
    )


def _user_error() -> None:
    with exit_on_user_error():
        raise ConfigError("data.root=/nowhere: no such folder")


def _bug() -> None:
    raise TypeError("unsupported operand")


def test_a_failed_job_is_recorded_and_the_next_one_runs(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert run_sweep_job(_user_error, _hydra_cfg(sweep, 0)) is None
    assert run_sweep_job(_bug, _hydra_cfg(sweep, 1)) is None
    (sweep / "2").mkdir()  # Hydra makes each job's folder
    assert run_sweep_job(lambda: 0.75, _hydra_cfg(sweep, 2)) == 0.75
    err = capsys.readouterr().err
    assert "error: data.root=/nowhere: no such folder" in err  # the user's line, once
    assert "Traceback" in err and "TypeError: unsupported operand" in err  # a bug keeps its traceback
    assert "job 0 failed (user error); the sweep goes on" in err
    assert read_failure(sweep / "0") == {
        "job": "0",
        "kind": "user error",
        "message": "data.root=/nowhere: no such folder",
    }
    assert read_failure(sweep / "1")["kind"] == "bug" and read_failure(sweep / "2") is None
    text, code = report(sweep)
    assert code == 1  # a bug among the failures
    assert text.splitlines() == [
        "job 0 failed (user error): data.root=/nowhere: no such folder",
        "job 1 failed (bug): TypeError: unsupported operand",
        f"2 of 3 jobs failed in {sweep}; the others ran to the end "
        f"(python -m gliograde.summarize {sweep} lists them all)",
    ]
    (sweep / "1" / FAILED_MARKER).unlink()
    assert report(sweep)[1] == 2  # user errors only
    (sweep / "0" / FAILED_MARKER).unlink()
    assert report(sweep) is None and failures(sweep) == []


def test_ctrl_c_and_a_clean_exit_are_not_failures(tmp_path):
    sweep = tmp_path / "sweep"

    def interrupted() -> None:
        raise KeyboardInterrupt

    def clean_exit() -> None:
        raise SystemExit(0)

    with pytest.raises(KeyboardInterrupt):
        run_sweep_job(interrupted, _hydra_cfg(sweep, 0))
    with pytest.raises(SystemExit):
        run_sweep_job(clean_exit, _hydra_cfg(sweep, 0))
    assert failures(sweep) == []


def test_an_optuna_study_without_any_objective_ends_in_one_line_at_its_last_trial(tmp_path, capsys):
    sweep = tmp_path / "study"
    optuna = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert run_sweep_job(_user_error, _hydra_cfg(sweep, 0, optuna)) is None
    assert not last_trial_of_failed_study(sweep, 0, 3)
    assert run_sweep_job(_user_error, _hydra_cfg(sweep, 1, optuna)) is None
    with pytest.raises(SystemExit) as stop:
        run_sweep_job(_user_error, _hydra_cfg(sweep, 2, optuna))
    assert stop.value.code == 2
    assert "error: no trial of the Optuna study finished with an objective" in capsys.readouterr().err
    # one trial with an objective: the study reports its best, as Optuna does
    (sweep / "1" / FAILED_MARKER).unlink()
    assert not last_trial_of_failed_study(sweep, 2, 3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep_cohort") / "cohort"
    generate_cohort(root, patients=16, seed=11, shape=(40, 40, 20), lgg_fraction=0.5, compress=False)
    return root


@pytest.mark.slow
def test_a_sweep_whose_first_job_fails_runs_the_rest_and_lists_the_failure(cohort, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    sweep = tmp_path / "sweep"
    args = debug_sweep_args(tmp_path / "cache", sweep, f"data.root={empty},{cohort}")
    result = run_python(*args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"job 0 failed (user error): {empty}: no patient folders" in result.stderr
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"1 of 2 jobs failed in {sweep}; the others ran")
    assert "test/patient_auroc" in json.loads((sweep / "1" / "metrics.json").read_text())
    assert read_failure(sweep / "0")["kind"] == "user error" and not (sweep / "0" / "metrics.json").exists()

    summary = run_python("-m", "gliograde.summarize", str(sweep), "--bootstrap", "20")
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert "swept: data.root" in summary.stdout  # though only one of its jobs finished
    assert f"job 0    FAILED: user error: {empty}: no patient folders" in summary.stdout
    assert "Jobs without a result" in (sweep / "sweep_summary.md").read_text()


@pytest.mark.slow
def test_optuna_trials_without_an_objective_fail_and_the_study_goes_on(cohort, tmp_path):
    """An objective that was never logged (a validation split of one class leaves
    val/patient_auroc undefined) fails its trial; no trial counts, and no traceback."""
    sweep = tmp_path / "study"
    args = debug_sweep_args(
        tmp_path / "cache",
        sweep,
        f"data.root={cohort}",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "optimized_metric=val/never_logged",
    )
    result = run_python(*args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "float-castable" not in result.stderr
    for job in ("0", "1"):  # the study went on after trial 0
        assert (sweep / job / "metrics.json").is_file()
        assert f"warning: job {job}: val/never_logged was never logged" in result.stderr
        assert read_failure(sweep / job)["kind"] == "no objective"
    assert "error: no trial of the Optuna study finished with an objective" in result.stderr

"""logger=many: TensorBoard, CSV and MLflow receive the curves, the hyperparameters and the
final patient-level metrics; MLflow's own client reads them back from the local file store."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess

import pytest
from helpers.commands import REPO, run_python
from helpers.configs import compose_config
from omegaconf import OmegaConf

from gliograde.training import tracking
from gliograde.errors import ConfigError
from gliograde.training.tracking import tracking_uri


@pytest.mark.slow
def test_many_loggers_record_params_curves_and_final_metrics(tiny_cohort_master, tmp_path):
    from mlflow.tracking import MlflowClient

    run, store = tmp_path / "run", tmp_path / "mlflow"
    result = run_python(
        "train.py",
        "logger=many",
        f"logger.mlflow.store={store}",
        "data=brats2020",
        f"data.root={tiny_cohort_master}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.progress=false",
        "data.slices.k=4",
        "data.batch_size=8",
        "trainer=cpu",
        "debug=limit",
        "callbacks.last_checkpoint=null",  # never resumed: the best checkpoint is enough
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert OmegaConf.load(run / "config.yaml").logger.keys() == {"tensorboard", "csv", "mlflow"}
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    client = MlflowClient(tracking_uri=tracking_uri(store))
    experiment = client.get_experiment_by_name("train")
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["run_dir"] == str(run)
    params = mlflow_run.data.params
    assert params["model"] == "resnet18" and params["slices"] == "tumor_topk" and params["seed"] == "42"
    final = mlflow_run.data.metrics
    for name in ("test/patient_auroc", "test/patient_count", "val/patient_auroc"):
        assert final[f"final/{name}"] == metrics[name], name
    history = client.get_metric_history(mlflow_run.info.run_id, "val/patient_auroc")
    assert len(history) == 2 and history[0].step < history[1].step  # one point per epoch (debug=limit)

    with open(run / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len([r for r in rows if r.get("val/patient_auroc")]) == 2
    assert float(next(r for r in rows if r.get("final/test/patient_auroc"))["final/test/patient_auroc"]) == (
        metrics["test/patient_auroc"]
    )
    assert (run / "csv" / "hparams.yaml").exists()


def test_mlflow_logger_without_mlflow_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(tracking, "_MLFLOW_AVAILABLE", False)
    with pytest.raises(ConfigError, match="logger=mlflow needs MLflow: pip install mlflow-skinny"):
        tracking.LocalMLFlowLogger(store=tmp_path / "mlflow")


def test_make_mlflow_ui_installs_the_full_package_and_serves_the_loggers_store(tmp_path):
    venv = tmp_path / "venv"
    # under `make test` the parent make's MAKEFLAGS/MAKELEVEL would add "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "mlflow-ui", f"VENV={venv}"],
        cwd=REPO, capture_output=True, text=True, timeout=60, env=env,
    )
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert f"{venv}/bin/pip install --quiet -e '.[dev,tracking]'" in lines
    store = compose_config("train", ["logger=mlflow"]).logger.mlflow.store
    command = f"mlflow ui --backend-store-uri sqlite:///{store}/mlflow.db --port 5000"
    assert lines[-1] == f"{venv}/bin/{command}"
    assert f"make mlflow-ui          # {command}" in (REPO / "README.md").read_text()
    # the UI reads only a store of its own release: the extra and the logging package agree
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (skinny,) = [d for d in project["dependencies"] if d.startswith("mlflow-skinny")]
    (full,) = [d for d in project["optional-dependencies"]["tracking"] if re.match(r"mlflow\b", d)]
    assert full.removeprefix("mlflow") == skinny.removeprefix("mlflow-skinny")

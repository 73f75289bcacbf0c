# gliograde: `make train` trains on the built-in synthetic cohort, `make test` runs the tests,
# `make bench` measures the data path and the training loop (a few minutes, CPU);
# `make bench-gpu` training throughput on one GPU (a few minutes; a tiny CPU check without one);
# `make mlflow-ui` MLflow's UI over logs/mlflow (installs the full mlflow package once);
# `make clean` lists what runs left in logs/ and outputs/, `make clean YES=1` removes it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRACKING := $(VENV)/.tracking
MLFLOW_STORE ?= logs/mlflow
MLFLOW_PORT ?= 5000

.PHONY: install train test test-fast bench bench-gpu prepare tensorboard mlflow-ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: install
	$(BIN)/python train.py experiment=quickstart

# TEST_JOBS pytest-xdist processes (default 2: both cores of the reference machine; 0 runs in one process)
TEST_JOBS ?= 2

test: install
	$(BIN)/python -m pytest -q -n $(TEST_JOBS)

# unit tests only: everything but the end-to-end runs marked slow
test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) -m 'not slow'

bench: install
	$(BIN)/python -m benchmarks.bench --out logs/bench/bench.json

bench-gpu: install
	$(BIN)/python -m benchmarks.bench --gpu --out logs/bench/gpu_bench.json

prepare: install
	$(BIN)/python -m gliograde.prepare

tensorboard: install
	$(BIN)/tensorboard --logdir logs

# the full mlflow package (its UI server), once: the default install has only mlflow-skinny
$(TRACKING): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,tracking]'
	touch $(TRACKING)

# MLflow's UI over logger=mlflow's local store, at http://127.0.0.1:$(MLFLOW_PORT)
mlflow-ui: $(TRACKING)
	mkdir -p $(MLFLOW_STORE)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MLFLOW_STORE)/mlflow.db --port $(MLFLOW_PORT)

# what the runs left in logs/ and outputs/ (sizes, runs, sweeps); YES=1 removes them, never while
# a training writes there (standard library only: no install needed)
clean:
	PYTHONPATH=src $(PYTHON) -m gliograde.clean $(if $(YES),--yes)

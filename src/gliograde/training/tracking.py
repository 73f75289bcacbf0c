"""Experiment tracking in MLflow without a server: a SQLite database in a local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_utilities.core.imports import RequirementCache
from pytorch_lightning.loggers import MLFlowLogger

from gliograde.errors import ConfigError

_MLFLOW_AVAILABLE = bool(RequirementCache("mlflow>=2.0") or RequirementCache("mlflow-skinny>=2.0"))


class LocalMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger on ``store/mlflow.db`` (SQLite), artifacts in ``store/artifacts``.

    MLflow's plain-folder store is frozen and refused by recent MLflow; SQLite is its
    recommended local backend. Browse with ``mlflow ui --backend-store-uri sqlite:///STORE/mlflow.db``.
    """

    def __init__(self, store: str | Path = "logs/mlflow", **kwargs: Any):
        if not _MLFLOW_AVAILABLE:
            raise ConfigError(
                "logger=mlflow needs MLflow: pip install mlflow-skinny (or use logger=tensorboard)"
            )
        store = Path(store).expanduser().resolve()
        try:
            store.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"logger.mlflow.store={store}: cannot create it ({exc.strerror or exc})"
            ) from None
        super().__init__(
            tracking_uri=tracking_uri(store),
            artifact_location=(store / "artifacts").as_uri(),
            **kwargs,
        )


def tracking_uri(store: str | Path) -> str:
    """The MLflow tracking URI of a :class:`LocalMLFlowLogger` store, for ``MlflowClient``."""
    return f"sqlite:///{Path(store).expanduser().resolve() / 'mlflow.db'}"

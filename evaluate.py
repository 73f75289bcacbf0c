"""Evaluate a finished run per patient: ``python evaluate.py run_dir=RUN [split=...] [data.*=...]``.

Writes slice and patient predictions, metrics with bootstrap intervals, plots and Grad-CAM
overlays to ``RUN/eval/<split>/`` (or ``output_dir``), and logs the figures to the run's
TensorBoard.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gliograde.config import CONF_DIR
from gliograde.data.errors import DataError
from gliograde.evaluation.runner import data_overrides, evaluate


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg, data_overrides(list(HydraConfig.get().overrides.task)))
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

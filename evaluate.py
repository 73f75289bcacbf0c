"""Evaluate a finished run per patient: ``python evaluate.py run_dir=RUN [split=...] [data.*=...]``.

Writes slice and patient predictions, metrics with bootstrap intervals, plots and Grad-CAM
overlays to ``RUN/eval/<split>/`` (or ``output_dir``), and logs the figures to the run's
TensorBoard.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gliograde.config import CONF_DIR
from gliograde.errors import exit_on_user_error
from gliograde.evaluation.runner import data_overrides, evaluate


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        evaluate(cfg, data_overrides(list(HydraConfig.get().overrides.task)))


if __name__ == "__main__":
    main()

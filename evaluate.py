"""Evaluate a finished run per patient: ``python evaluate.py run_dir=RUN [split=...] [data.*=...]``.

Writes slice and patient predictions, metrics with bootstrap intervals, plots and Grad-CAM
overlays to ``RUN/eval/<split>/`` for the default options, ``RUN/eval/<split>_<options>/``
otherwise (e.g. ``test_youden_vote``), or ``output_dir``, renamed into place when complete; logs the
figures to the run's TensorBoard unless the run is read-only.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gliograde.config.compose import checked_main
from gliograde.errors import exit_on_user_error


@checked_main("evaluate")
def main(cfg: DictConfig) -> None:
    from gliograde.evaluation.runner import data_overrides, evaluate  # after the command line is checked

    with exit_on_user_error():
        evaluate(cfg, data_overrides(list(HydraConfig.get().overrides.task)))


if __name__ == "__main__":
    main()

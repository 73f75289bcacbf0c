"""Grade new patients: ``python predict.py ckpt=RUN input=PATIENT_DIR`` (or ``input=ROOT``,
``manifest=FILE.csv``).

Writes predictions.csv, predictions.json and per-patient figures to ``output_dir`` (default
``outputs/predict/<date>_<time>/``). Heavy modules are imported only when needed.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from gliograde.config.compose import CONF_DIR
from gliograde.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        from gliograde.inference.runner import predict

        predict(cfg)


if __name__ == "__main__":
    from gliograde.config.compose import expand_switches

    sys.argv = expand_switches(sys.argv, {"ingest": "ingest.enabled"})
    main()

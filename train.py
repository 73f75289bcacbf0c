"""Train a glioma-grade classifier: ``python train.py [group=option ...] [key=value ...]``.

Examples: ``python train.py model=resnet18 trainer.gpus=1``,
``python train.py -m model=resnet18,resnet34``, ``python train.py data=brats2020 data.root=PATH``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from gliograde.config import CONF_DIR
from gliograde.errors import exit_on_user_error
from gliograde.training import train


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error():
        metrics = train(cfg)
    value = metrics.get(cfg.optimized_metric)
    return None if value is None else float(value)


if __name__ == "__main__":
    main()

"""Train a glioma-grade classifier: ``python train.py [group=option ...] [key=value ...]``.

Examples: ``python train.py model=resnet18 trainer.gpus=1``,
``python train.py -m model=resnet18,resnet34``, ``python train.py data=brats2020 data.root=PATH``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from gliograde.config import CONF_DIR
from gliograde.data.errors import DataError
from gliograde.training import NoGPUError, RunDirectoryError, train


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except (DataError, NoGPUError, RunDirectoryError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # a full disk, a checkpoint directory that cannot be written...
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    value = metrics.get(cfg.optimized_metric)
    return None if value is None else float(value)


if __name__ == "__main__":
    main()

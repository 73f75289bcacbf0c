"""Train a glioma-grade classifier: ``python train.py [group=option ...] [key=value ...]``.

Examples: ``python train.py model=resnet18 trainer.gpus=1``,
``python train.py -m model=resnet18,resnet34``, ``python train.py data=brats2020 data.root=PATH``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from gliograde.config.compose import checked_main
from gliograde.errors import exit_on_user_error
from gliograde.sweeps.jobs import missing_objective


@checked_main("train")
def main(cfg: DictConfig) -> float | None:
    from gliograde.training.fit import train  # after the command line is checked

    with exit_on_user_error():
        metrics = train(cfg)
    value = metrics.get(cfg.optimized_metric)
    if value is None:  # an Optuna study fails this trial and goes on (NaN would end the study)
        missing_objective(cfg.optimized_metric)
        return None
    return float(value)


if __name__ == "__main__":
    main()

"""Configs composed from conf/ with Hydra's compose API, as the entry points compose them."""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from gliograde.config.compose import CONF_DIR


def compose_config(
    name: str = "train", overrides: Sequence[str] = (), hydra_node: bool = False
) -> DictConfig:
    """``name``.yaml with ``overrides``, unresolved; ``hydra_node`` keeps the ``hydra:`` node."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra_node)

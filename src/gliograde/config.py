"""Where the Hydra config tree lives, and building objects from its nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from gliograde.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
"""The repository's ``conf/`` (the package is installed in editable mode from the checkout)."""


def build(node: DictConfig, **overrides: Any) -> Any:
    """Instantiate a ``_target_`` node with plain (resolved) arguments.

    Unlike ``hydra.utils.instantiate`` this does not wrap the target's own errors, so a
    ``DataError`` or ``ValueError`` reaches the user as its one-line message.
    """
    try:
        kwargs = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = err.full_key or "a required value"
        raise ConfigError(f"{key} is not set: add {key}=... to the command line") from None
    assert isinstance(kwargs, dict)
    target = kwargs.pop("_target_")
    kwargs.update(overrides)
    return get_class(target)(**kwargs)

"""Resuming a run: the run's own saved config decides what is trained, not the command line.

A resumed run reloads ``RUN/config.yaml``. Of the user's command-line overrides, those that
only change how or how long it runs (more epochs, devices, logging, loader workers) are
applied; any other one must agree with the run's value, or the resume is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gliograde.config.legacy_targets import current_targets
from gliograde.errors import ConfigError, GliogradeError

RUN_CONFIG = "config.yaml"

# Keys (or whole subtrees) a resumed run may take from the command line: none changes the
# data, the model, the optimisation or the split.
RESUMABLE_OVERRIDES = (
    "ckpt_path",
    "test",
    "optimized_metric",
    "paths",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.gpus",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.sync_batchnorm",
    "trainer.benchmark",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "logger",
    "callbacks.progress_bar",
    "callbacks.model_summary",
    "callbacks.lr_monitor",
    "callbacks.sample_images",
    "callbacks.confusion_matrix",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.transfer_dtype",
    "data.device_cache",
    "data.progress",
    "data.cache_dir",
    "data.preprocess.workers",
)

_ABSENT = object()


class ResumeError(GliogradeError):
    """A run cannot be resumed as asked."""


def refuse_existing_run(run_dir: Path) -> None:
    """Refuse to start a fresh run where another run's records are."""
    if (run_dir / RUN_CONFIG).exists():
        raise ResumeError(
            f"{run_dir} already holds a run ({RUN_CONFIG}): resume it with "
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}, or start a new run in another hydra.run.dir"
        )


def resumed_config(cfg: DictConfig, run_dir: Path, ckpt_path: str) -> DictConfig:
    """The run's saved config, with the command line's resumable overrides applied.

    Raises :class:`ResumeError` when the run has no saved config or the checkpoint lies outside
    it, and :class:`ConfigError` naming the key, the run's value and the given one when an
    override would change what the run trains.
    """
    saved_path = run_dir / RUN_CONFIG
    if not saved_path.is_file():
        raise ResumeError(
            f"ckpt_path={ckpt_path}: {run_dir} holds no {RUN_CONFIG} to resume from; "
            "set hydra.run.dir to the run directory the checkpoint belongs to"
        )
    if not Path(ckpt_path).resolve().is_relative_to(run_dir.resolve()):
        raise ResumeError(
            f"ckpt_path={ckpt_path} is not in the run directory {run_dir}: resume a run in its own "
            "directory (hydra.run.dir=RUN ckpt_path=RUN/checkpoints/last.ckpt)"
        )
    given = OmegaConf.to_container(cfg, resolve=True)
    saved = current_targets(OmegaConf.to_container(OmegaConf.load(saved_path), resolve=False))
    assert isinstance(given, dict) and isinstance(saved, dict)
    # A run directory that was moved: its recorded paths follow it.
    saved = _rebase(saved, str(_get(saved, "paths.output_dir")), str(given["paths"]["output_dir"]))
    for key in sorted(_touched_keys(cfg, given, saved)):
        unit = _resumable_unit(key)
        if unit is not None:
            _assign(saved, unit, _get(given, unit))
            continue
        run_value, given_value = _get(saved, key), _get(given, key)
        if run_value != given_value:
            raise ConfigError(
                f"{key}={_show(given_value)} differs from the resumed run's {key}={_show(run_value)} "
                f"({saved_path}): drop the override to resume, or start a new run in another hydra.run.dir"
            )
    return OmegaConf.create(saved)


def nothing_left(ckpt_path: str | Path, trainer_cfg: Any) -> str | None:
    """Why a resume from ``ckpt_path`` would train nothing under ``trainer_cfg`` (its epochs or
    steps already reach ``trainer.max_epochs`` or ``trainer.max_steps``), or None."""
    import torch

    stored = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    progress = stored.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    epochs, steps = progress.get("processed"), stored.get("global_step")
    max_epochs, max_steps = trainer_cfg.get("max_epochs"), trainer_cfg.get("max_steps")
    if max_steps is not None and max_steps >= 0 and steps is not None and steps >= max_steps:
        return f"its {steps} steps reach trainer.max_steps={max_steps}"
    if max_epochs is not None and max_epochs >= 0 and epochs is not None and epochs >= max_epochs:
        return f"its {epochs} epoch(s) reach trainer.max_epochs={max_epochs}"
    return None


def _touched_keys(cfg: DictConfig, given: dict, saved: dict) -> set[str]:
    """Leaf keys the user's own overrides set: the keys (and subtrees) named on the command
    line, and whatever the chosen config groups changed from the defaults."""
    named = _command_line_keys()
    if named is None:  # not under Hydra: every key counts as given
        return set(_leaves(given)) | set(_leaves(saved))
    touched: set[str] = set()
    for key in named:
        touched |= {leaf for leaf in (*_leaves(given), *_leaves(saved)) if _within(leaf, key)}
    defaults = _default_config()
    current = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(current, dict)
    for leaf in set(_leaves(defaults)) | set(_leaves(current)):
        if _get(defaults, leaf) != _get(current, leaf):
            touched.add(leaf)
    return touched


def _command_line_keys() -> list[str] | None:
    """The keys and groups of Hydra's task overrides, or None outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return None
    overrides = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    return [o.key_or_group for o in overrides]


def _default_config() -> dict:
    """The training config with no overrides, unresolved."""
    from hydra import compose

    defaults = OmegaConf.to_container(compose(config_name="train"), resolve=False)
    assert isinstance(defaults, dict)
    return defaults


def _leaves(tree: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(tree, dict) and tree:
        for name, value in tree.items():
            yield from _leaves(value, f"{prefix}{name}.")
    elif prefix:
        yield prefix[:-1]


def _within(key: str, ancestor: str) -> bool:
    return key == ancestor or key.startswith(ancestor + ".")


def _resumable_unit(key: str) -> str | None:
    return next((unit for unit in RESUMABLE_OVERRIDES if _within(key, unit)), None)


def _get(tree: Any, key: str) -> Any:
    for name in key.split("."):
        if not isinstance(tree, dict) or name not in tree:
            return _ABSENT
        tree = tree[name]
    return tree


def _assign(tree: dict, key: str, value: Any) -> None:
    *parents, name = key.split(".")
    for parent in parents:
        tree = tree.setdefault(parent, {})
    if value is _ABSENT:
        tree.pop(name, None)
    else:
        tree[name] = value


def _rebase(tree: Any, old: str, new: str) -> Any:
    if old == new:
        return tree
    if isinstance(tree, dict):
        return {k: _rebase(v, old, new) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_rebase(v, old, new) for v in tree]
    if isinstance(tree, str) and (tree == old or tree.startswith(old + "/")):
        return new + tree[len(old) :]
    return tree


def _show(value: Any) -> str:
    """A value as it is typed on the command line."""
    if value is _ABSENT:
        return "(not set)"
    return _plain(value)


def _plain(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_plain(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_plain(v)}" for k, v in value.items()) + "}"
    return str(value)

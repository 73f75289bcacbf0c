"""Where the Hydra config tree lives, building objects from its nodes, and the entry points'
``hydra.main`` wrapper that checks a command line before Hydra runs anything."""

from __future__ import annotations

import functools
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from gliograde.errors import USER_ERROR_EXIT, ConfigError, exit_on_user_error

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
"""The repository's ``conf/`` (the package is installed in editable mode from the checkout)."""

T = TypeVar("T")


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


def checked_main(config_name: str) -> Callable[[Callable[[DictConfig], T]], Callable[[], T | None]]:
    """``hydra.main`` for ``conf/<config_name>.yaml``, with every user mistake one line, exit 2.

    Before Hydra creates a run directory, the command line's overrides are parsed and composed
    here (each value of a ``-m`` sweep too) and the result checked against
    :mod:`gliograde.config.schema`; each job's config is checked again before the task runs.
    """

    def decorator(task: Callable[[DictConfig], T]) -> Callable[[], T | None]:
        def checked(cfg: DictConfig) -> T:
            from gliograde.files.quiet import quiet_known_noise
            from gliograde.config.schema import validate_config
            from gliograde.config.overrides import warn_ineffective_overrides

            with exit_on_user_error():
                validate_config(cfg, config_name)
            warn_ineffective_overrides(cfg, list(HydraConfig.get().overrides.task))
            quiet_known_noise()
            return task(cfg)

        @functools.wraps(task)
        def checked_task(cfg: DictConfig) -> T | None:
            if HydraConfig.get().mode == RunMode.MULTIRUN:  # one job's failure does not end the sweep
                from gliograde.sweeps.jobs import run_sweep_job

                return run_sweep_job(lambda: checked(cfg), HydraConfig.get())
            try:
                return checked(cfg)
            except SystemExit as stop:
                if stop.code == USER_ERROR_EXIT and config_name == "train":
                    remove_if_empty_run(Path(HydraConfig.get().runtime.output_dir))
                raise

        run = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(checked_task)

        @functools.wraps(task)
        def main() -> T | None:
            with exit_on_user_error():
                check_command_line(config_name, sys.argv[1:])
            return run()

        return main

    return decorator


def expand_switches(argv: Sequence[str], switches: dict[str, str]) -> list[str]:
    """``ingest=true`` as ``ingest.enabled=true``: a config group that is also switched on or off
    (Hydra reads ``group=true`` as a choice of config file, which a boolean cannot be)."""
    expanded = []
    for item in argv:
        key, sep, value = item.partition("=")
        if sep and key in switches and value.lower() in ("true", "false"):
            item = f"{switches[key]}={value.lower()}"
        expanded.append(item)
    return expanded


def check_command_line(config_name: str, argv: Sequence[str]) -> None:
    """Parse, compose and validate the overrides in ``argv`` as Hydra would; raise ``ConfigError``."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(list(argv))
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    overrides = [_parse(item) for item in args.overrides]
    if args.config_path or args.config_dir or args.config_name not in (None, config_name):
        return  # another config: Hydra reports on it itself
    from gliograde.config.gpu_check import refuse_gpu_request_without_gpu
    from gliograde.config.schema import validate_config

    name = config_name
    plain = [o.input_line for o in overrides if not o.is_sweep_override()]
    sweeps = [o for o in overrides if o.is_sweep_override()]
    with hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        base = _compose(name, plain)
        mode = str(OmegaConf.select(base, "hydra.mode", default=None))
        if sweeps and not (args.multirun or mode.endswith("MULTIRUN")):
            _compose(name, [o.input_line for o in overrides])  # Hydra's "use --multirun" error
        # Without its swept values a config may be incomplete (data.folds=5 -m data.fold=0,1,...).
        # A single run's deep checks (Lightning's Trainer arguments) follow in the job itself;
        # a sweep's are made here, before any job starts.
        for cfg in list(_sweep_configs(name, plain, sweeps)) or [base]:
            validate_config(cfg, name, deep=bool(sweeps))
            if name == "train" and not args.cfg:  # before torch is imported: a second, not half a minute
                refuse_gpu_request_without_gpu(cfg, multirun=bool(args.multirun or mode.endswith("MULTIRUN")))


def _sweep_configs(name: str, plain: list[str], sweeps: list[Override]):
    """One composed config per value of each enumerable sweep (the others at their first value).

    Interval sweeps (e.g. Optuna's) cannot be enumerated; each job checks its own values.
    """
    discrete = {o.get_key_element(): list(o.sweep_string_iterator()) for o in sweeps if o.is_discrete_sweep()}
    for key, values in discrete.items():
        others = [f"{k}={v[0]}" for k, v in discrete.items() if k != key and v]
        for value in values:
            yield _compose(name, [*plain, *others, f"{key}={value}"])


def _parse(item: str) -> Override:
    try:
        return OverridesParser.create().parse_override(item)
    except HydraException as err:  # the lexer raises a bare HydraException, the parser a subclass
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines if not line.startswith(("Error parsing", "See "))), "")
        key, sep, value = item.partition("=")
        if not sep:
            fix = "write key=value (e.g. data.root=PATH)"
        else:
            fix = f"quote the value for Hydra, e.g. '{key}=\"{value}\"'"
        reason = reason or "not valid override syntax"
        raise ConfigError(f"cannot read the override {item!r} ({reason}): {fix}") from None


def _compose(name: str, overrides: list[str]) -> DictConfig:
    try:
        return hydra.compose(name, overrides=overrides, return_hydra_config=True)
    except MissingConfigException as err:
        raise ConfigError(_missing_option(err, overrides)) from None
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_composition_error(err, name, overrides)) from None


def _missing_option(err: MissingConfigException, overrides: list[str]) -> str:
    missing = err.missing_cfg_file or ""
    group, _, option = missing.rpartition("/")
    if not group:
        return _one_line(err)
    options = ", ".join(err.options or []) or "(none)"
    return f"{group}={option}: no such {group} config; choose one of {options}"


def _composition_error(err: Exception, name: str, overrides: list[str]) -> str:
    found = re.search(r"Could not override '([^']+)'", str(err))
    if not found:
        return _one_line(err)
    key = found.group(1)
    value = next((o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+~") == key), "")
    parent = key.rpartition(".")[0]
    rest = [o for o in overrides if o.partition("=")[0].lstrip("+~") != key]
    try:
        node = hydra.compose(name, overrides=rest)
        node = OmegaConf.select(node, parent) if parent else node
    except (HydraException, OmegaConfBaseException):
        node = None
    where = parent or "the top level"
    if isinstance(node, DictConfig):
        return f"{key}={value}: unknown key; {where} has {', '.join(sorted(str(k) for k in node.keys()))}"
    return f"{key}={value}: {where} is not a mapping of options, so {key} cannot be set"


def _one_line(err: BaseException) -> str:
    """Hydra's multi-line message as one line."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def remove_if_empty_run(directory: Path) -> None:
    """Remove a run directory that a refused command left holding only Hydra's own records."""
    entries = list(directory.iterdir()) if directory.is_dir() else []
    if not any(p.name != ".hydra" and not p.name.endswith(".log") for p in entries):
        shutil.rmtree(directory, ignore_errors=True)

"""Checking a config value against a type hint (with ranges and allowed values), and describing the
hint in a one-line error."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from gliograde.errors import ConfigError


MISSING = "???"


@dataclass(frozen=True)
class Range:
    """A numeric bound for ``Annotated[int | float, Range(...)]`` fields."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.open_high else value > self.high))

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.open_high else '<='} {self.high}"
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"


# ------------------------------------------------------------------------- checker
def check(value: Any, hint: Any, key: str, missing_ok: bool = False) -> None:
    """Raise ``ConfigError`` naming ``key`` unless ``value`` (plain Python) matches ``hint``."""
    if isinstance(value, str) and value == MISSING:
        if missing_ok:
            return
        raise ConfigError(f"{key} is not set: add {key}=... to the command line")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        check(value, args[0], key, missing_ok)
        for rule in args[1:]:
            if isinstance(rule, Range) and not rule.holds(value):
                raise ConfigError(f"{key}={_show(value)} must be {describe(hint)}")
        return
    if hint is Any:
        return
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return
        members = [a for a in args if a is not type(None)]
        for member in members:
            try:
                check(value, member, key, missing_ok)
                return
            except ConfigError:
                pass
        shaped = [m for m in members if _shape(m) is not None and _shape(m) == _shape_of(value)]
        if len(shaped) == 1 and _shape_of(value) == "mapping":
            check(value, shaped[0], key, missing_ok)  # the inner key's own, more precise error
        raise ConfigError(f"{key}={_show(value)} must be {describe(hint)}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}={_show(value)} must be {describe(hint)}")
        check_mapping(value, _fields(hint), key, missing_ok)
        return
    if not _leaf_matches(value, hint, origin, args, key, missing_ok):
        raise ConfigError(f"{key}={_show(value)} must be {describe(hint)}")


def check_mapping(
    values: Mapping[str, Any], schema: Mapping[str, Any], where: str, missing_ok: bool = False
) -> None:
    """Check each key of ``values`` against ``schema``; an unknown key is an error."""
    for name, value in values.items():
        if name not in schema:
            raise ConfigError(
                f"{where}.{name}={_show(value)}: unknown key; {where} takes {', '.join(sorted(schema))}"
            )
        check(value, schema[name], f"{where}.{name}", missing_ok)


def _leaf_matches(value: Any, hint: Any, origin: Any, args: tuple, key: str, missing_ok: bool) -> bool:
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, Path):
        # The override parser reads data.root=2020 as a number; as a name it is still text.
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    if origin in (tuple, list, Sequence) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            return False
        for i, item in enumerate(value):
            item_hint = (args[0] if origin is not tuple or args[-1] is Ellipsis else args[i]) if args else Any
            check(item, item_hint, f"{key}[{i}]", missing_ok)
        return True
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            return False
        for name, item in value.items():
            check(item, args[1] if args else Any, f"{key}.{name}", missing_ok)
        return True
    return isinstance(hint, type) and isinstance(value, hint)


def describe(hint: Any) -> str:
    """What ``hint`` allows, in words (``an integer >= 1``, ``one of ['a', 'b']``...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        ranges = [r.describe() for r in args[1:] if isinstance(r, Range)]
        return " ".join([describe(args[0]), *ranges])
    if origin in (Union, types.UnionType):
        literals = [v for a in args if typing.get_origin(a) is Literal for v in typing.get_args(a)]
        words = [describe(a) for a in args if typing.get_origin(a) is not Literal]
        if literals:
            words.insert(0, f"one of {literals}")
        return " or ".join(dict.fromkeys(w for w in words if w))
    if origin is Literal:
        return f"one of {list(args)}"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {', '.join(_fields(hint))}"
    if origin in (tuple, list, Sequence) or hint in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
        return f"a list (each {describe(args[0])})" if args else "a list"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return "a mapping"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "text", Path: "a path"}
    words[type(None)] = "null"
    words[Any] = "anything"
    return words.get(hint, "")  # Lightning's object-only types cannot come from a config


def _shape(hint: Any) -> str | None:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _shape(typing.get_args(hint)[0])
    if dataclasses.is_dataclass(hint) or origin in (dict, Mapping) or hint in (dict, Mapping):
        return "mapping"
    return None


def _shape_of(value: Any) -> str | None:
    return "mapping" if isinstance(value, Mapping) else None


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)

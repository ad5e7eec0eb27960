"""Dataclass configs from plain data: `from_dict` builds a dataclass from a mapping, rejecting
unknown keys (with a close match), wrong types and impossible values with a `ConfigError` naming
the full dotted key (e.g. `modalities.image.patch_size`); `require`, `require_positive` and
`require_divisor` are what each config's `validate(prefix)` is written with."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

NONE_WORDS = ("none", "null")  # key=none on the command line, and the same word in YAML, mean None
BOOL_WORDS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` (int, float, str, bool, X | None, tuple[X, ...])."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        # YAML reads `init: none` as the word "none": as on the command line, it means None
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
        if origin is dict:
            key_tp, value_tp = typing.get_args(tp)
            return {coerce(key_tp, k, key): coerce(value_tp, v, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        items = value if isinstance(value, (list, tuple)) else [value]  # a single item is a one-item list
        return [coerce(item_tp, v, join_key(key, str(i))) for i, v in enumerate(items)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        (item_tp, *_) = typing.get_args(tp)
        return tuple(coerce(item_tp, v, join_key(key, str(i))) for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and isinstance(value, str) and value.lower() in BOOL_WORDS:
        return BOOL_WORDS[value.lower()]
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def from_dict(cls: type, data: Mapping[str, Any] | None, prefix: str) -> Any:
    """Build the dataclass `cls` from `data`, checking keys, types and then `validate()`."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{join_key(prefix, key)}: unknown key{hint}; expected one of {names}")
    kwargs = {}
    for k, v in data.items():
        sub_cls = hints[k] if dataclasses.is_dataclass(hints[k]) else None
        kwargs[k] = from_dict(sub_cls, v, join_key(prefix, k)) if sub_cls else coerce(hints[k], v, join_key(prefix, k))
    obj = cls(**kwargs)
    obj.validate(prefix)
    return obj


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def require(ok: object, key: str, expected: str, value: Any) -> None:
    """Raise a `ConfigError` naming `key` unless `ok` is truthy."""
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def require_positive(obj: Any, prefix: str, *names: str) -> None:
    """`require` each attribute `names` of `obj` to be None or > 0."""
    for name in names:
        value = getattr(obj, name)
        require(value is None or value > 0, join_key(prefix, name), "a positive number", value)


def require_divisor(obj: Any, prefix: str, part: str, whole: str) -> None:
    """`require` the attribute `part` of `obj` to divide its attribute `whole` (patches tiling an
    image, attention heads splitting a width)."""
    value, total = getattr(obj, part), getattr(obj, whole)
    require(total % value == 0, join_key(prefix, part), f"a divisor of {whole}={total}", value)


def split_key_value(item: str) -> tuple[str, str]:
    """A command line's `key=value` -> (key, value); a `ConfigError` for anything else."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{item!r}: expected key=value")
    return key, value


def mapping(value: Any, key: str) -> dict:
    """`value` as a dict ({} for None); a `ConfigError` naming `key` when it is not a mapping."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return dict(value)


def non_finite_numbers(data: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every NaN or infinite float in nested config data (dicts, lists,
    dataclasses), in order; list items are named `key[i]`."""

    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    if isinstance(data, float):
        return [] if math.isfinite(data) else [(prefix, data)]
    if isinstance(data, Mapping):
        return [bad for k, v in data.items() for bad in non_finite_numbers(v, join_key(prefix, str(k)))]
    if isinstance(data, (list, tuple)):
        return [bad for i, v in enumerate(data) for bad in non_finite_numbers(v, join_key(prefix, str(i)))]
    return []

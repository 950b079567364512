"""Generic JSON -> frozen dataclass conversion with key-path error messages.

Kept apart from ``config.py`` so that file holds only the schema itself. Every error names the full
key path and the offending value, and unknown keys get a "did you mean" suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import types
import typing
from typing import Any, Union

from xtc_ds.errors import ConfigError

__all__ = ["ConfigError", "from_json", "to_json", "describe"]


def describe(tp: Any) -> str:
    """Human wording of a field type for error messages."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(arg) for arg in typing.get_args(tp) if arg is not type(None))
    if origin is typing.Literal:
        return " or ".join(repr(arg) for arg in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {describe(typing.get_args(tp)[0])}s"
    if origin is dict:
        return "an object"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in tp)
    if dataclasses.is_dataclass(tp):
        return "an object"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _fail(path: str, value: Any, tp: Any) -> ConfigError:
    return ConfigError(f"{path}: {value!r} (must be {describe(tp)})")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError:
                continue
        raise _fail(path, value, tp)
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise _fail(path, value, tp)
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if isinstance(value, str) and item_tp is str:
            value = [value]  # the legacy schema allows a bare string where a list of patterns is expected
        if not isinstance(value, (list, tuple)):
            raise _fail(path, value, tp)
        return tuple(_convert(item_tp, item, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(path, value, tp)
        item_tp = typing.get_args(tp)[1]
        return {str(key): _convert(item_tp, item, f"{path}.{key}") for key, item in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _fail(path, value, tp) from None
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                raise ConfigError(f"{path}: {value!r} (must be a finite number)") from None
            if not math.isfinite(number):
                raise ConfigError(f"{path}: {value!r} (must be a finite number)")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported schema type {tp!r} at {path}")
    raise _fail(path, value, tp)


def from_json(cls: type, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a JSON object, rejecting unknown keys and wrong types.

    Args:
        cls: a dataclass whose field names are the JSON keys.
        data: the parsed JSON value.
        path: dotted key path of ``data``, used in error messages.
    Raises:
        ConfigError: naming the key path and value.
    """
    if not isinstance(data, dict):
        raise _fail(path, data, cls)
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{path}.{key}: unknown key{hint} (valid keys: {', '.join(fields)})")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{path}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}.{name}: missing (required, {describe(hints[name])})")
    return cls(**kwargs)


def to_json(value: Any) -> Any:
    """Inverse of :func:`from_json`: dataclasses to dicts, enums to their values, tuples to lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_json(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    return value

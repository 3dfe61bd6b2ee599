"""Build typed records (msgspec Structs) from parsed TOML/JSON, naming the exact key that is wrong.

One validator for the config file and the manifest: unknown keys, missing keys, wrong types and values
outside a ``Literal`` are reported as ``RecordError(key, problem)``.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, TypeVar, Union

import msgspec

T = TypeVar("T")


class RecordError(ValueError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def build(cls: type[T], data: object, where: str = "") -> T:
    """Return ``cls(**data)`` after checking every key and value against the record's type hints."""
    if not isinstance(data, dict):
        raise RecordError(where or "(top level)", f"expected a table, got {_kind(data)}")
    hints, fields = _record_type(cls)  # type: ignore[arg-type]  # a class is hashable
    for key in data:
        if key not in fields:
            raise RecordError(_join(where, str(key)), "unknown key")
    values: dict[str, Any] = {}
    for name, fld in fields.items():
        key = _join(where, name)
        if name in data:
            values[name] = _convert(hints[name], data[name], key)
        elif fld.required:
            raise RecordError(key, "missing")
    return cls(**values)


@functools.cache  # get_type_hints evaluates every annotation's text: a hook call reads several manifests
def _record_type(cls: type[msgspec.Struct]) -> tuple[dict[str, Any], dict[str, msgspec.structs.FieldInfo]]:
    return typing.get_type_hints(cls), {f.name: f for f in msgspec.structs.fields(cls)}


def _convert(hint: Any, value: object, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key)
            except RecordError as exc:
                errors.append(exc.problem)
        raise RecordError(key, errors[0] if len(errors) == 1 else f"expected {_hint_name(hint)}")
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise RecordError(key, f"must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(key, f"expected a list, got {_kind(value)}")
        return [_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(key, f"expected a table, got {_kind(value)}")
        return {str(k): _convert(args[1], v, _join(key, str(k))) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return build(hint, value, key)
    if hint is typing.Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise RecordError(key, f"expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(key, f"expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecordError(key, f"expected a number, got {_kind(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RecordError(key, f"expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"records.build cannot handle {hint!r} at {key}")  # a bug in a record definition


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _hint_name(hint: Any) -> str:
    return str(hint).replace("typing.", "")

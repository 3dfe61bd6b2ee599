"""``config --print``: the effective configuration, every default filled in, as TOML."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from mom_checkpoint.platform.config import Config


def as_dict(config: Config) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(config)
    data.pop("source", None)
    return data


def to_toml(config: Config) -> str:
    data = as_dict(config)
    lines = [f"# effective configuration (from {config.source})"]
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines += [f"{k} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for name, table in tables.items():
        for sub, values in table.items():
            lines += ["", f"[{name}.{sub}]"]
            lines += [f"{k} = {_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string is a JSON string

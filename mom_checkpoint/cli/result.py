"""The ``--json`` envelope: versioned on its own, so scripts can rely on its shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from mom_checkpoint import __version__

RESULT_SCHEMA = 1


def envelope(command: str, data: Any, *, ok: bool = True) -> str:
    return (
        json.dumps(
            {
                "result_schema": RESULT_SCHEMA,
                "tool": "mom-checkpoint",
                "version": __version__,
                "command": command,
                "ok": ok,
                "data": data,
            },
            indent=2,
            default=_plain,
        )
        + "\n"
    )


def _plain(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        return msgspec.structs.asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")

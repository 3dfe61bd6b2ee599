"""The ``--json`` envelope: versioned on its own, so scripts can rely on its shape."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

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
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")

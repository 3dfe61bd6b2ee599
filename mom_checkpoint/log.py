"""Structured logs: JSON lines (structlog) to ``log_file``, or to syslog.

pbs_mom records nothing about its hooks, so this log is the only record of what happened. A log file
that cannot be opened falls back to syslog rather than failing the checkpoint.
"""

from __future__ import annotations

import os
import sys
import syslog
from typing import Any, TextIO

CONSOLE_EXTRAS = ("rich", "better_exceptions", "colorama")


class SyslogLogger:
    """A structlog-compatible logger writing each rendered event to syslog."""

    def __init__(self) -> None:
        syslog.openlog("mom-checkpoint", syslog.LOG_PID, syslog.LOG_DAEMON)

    def msg(self, message: str) -> None:
        syslog.syslog(syslog.LOG_INFO, message)

    log = debug = info = warning = warn = error = critical = exception = fatal = failure = msg


def open_log_file(path: str) -> TextIO | None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except OSError:
        return None
    return os.fdopen(fd, "a", buffering=1)


def _structlog() -> Any:
    """structlog, without the console extras it would otherwise import (rich, which the admin
    commands install, costs about 30 ms of every hook call; the hook only writes JSON lines)."""
    if "structlog" in sys.modules:
        return sys.modules["structlog"]
    blocked = [name for name in CONSOLE_EXTRAS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import rich` fail inside structlog.dev
    try:
        import structlog
    finally:
        for name in blocked:
            if sys.modules.get(name) is None:
                del sys.modules[name]
    return structlog


MAX_VALUE = 2000  # characters of one logged string: a caller's argument cannot flood the log
MAX_ITEMS = 200  # items of one logged list


def cap_values(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: every value of an event cut to a bound, saying how much was cut (argv,
    paths and messages come from callers; sudo lets any user call mom-restart --own)."""
    return {
        key: _cap(value, 10 * MAX_VALUE if key == "traceback" else MAX_VALUE) for key, value in event.items()
    }


def _cap(value: Any, limit: int = MAX_VALUE) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}... ({len(value) - limit} more characters)"
    if isinstance(value, list | tuple):
        items = [_cap(item) for item in value[:MAX_ITEMS]]
        return items + ([f"... ({len(value) - MAX_ITEMS} more)"] if len(value) > MAX_ITEMS else [])
    if isinstance(value, dict):
        return {key: _cap(item) for key, item in list(value.items())[:MAX_ITEMS]}
    return value


def make_logger(log_file: str, **context: Any) -> Any:
    structlog = _structlog()  # imported here: only the programs that log pay for it

    target: Any
    stream = None if log_file == "syslog" else open_log_file(log_file)
    target = structlog.WriteLogger(stream) if stream is not None else SyslogLogger()
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        cap_values,
        structlog.processors.JSONRenderer(sort_keys=False),
    ]
    return structlog.wrap_logger(target, processors=processors).bind(pid=os.getpid(), **context)

"""Structured logs: JSON lines (structlog) to ``log_file``, or to syslog.

pbs_mom records nothing about its hooks, so this log is the only record of what happened. A log file
that cannot be opened falls back to syslog rather than failing the checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import syslog
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Protocol, TextIO

CONSOLE_EXTRAS = ("rich", "better_exceptions", "colorama")


class Logger(Protocol):
    """What the programs use of a structlog bound logger: one method per level, each taking the
    event's name and its fields, and ``bind`` for fields every later event carries."""

    def debug(self, event: str, **fields: Any) -> Any: ...
    def info(self, event: str, **fields: Any) -> Any: ...
    def warning(self, event: str, **fields: Any) -> Any: ...
    def error(self, event: str, **fields: Any) -> Any: ...
    def exception(self, event: str, **fields: Any) -> Any: ...
    def bind(self, **fields: Any) -> Logger: ...


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


_IMPORT_LOCK = threading.Lock()


@functools.cache  # once per process
def _structlog() -> ModuleType:
    """structlog, through its public package, with the console extras held out: the hook only writes
    JSON lines, and structlog's dev console and tracebacks import rich (a dependency of the admin
    commands' tables) when they can, about 40 ms of every hook call for nothing."""
    with _IMPORT_LOCK, _without_console_extras():
        import structlog

        return structlog


@contextlib.contextmanager
def _without_console_extras() -> Iterator[None]:
    """``import rich`` and the other console extras fail inside (Python's own way: a module that is None
    in sys.modules cannot be imported); afterwards they import as usual."""
    blocked = [name for name in CONSOLE_EXTRAS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name) is None:
                del sys.modules[name]


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


def exception_info(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: ``log.exception(...)`` records the traceback being handled, as structlog's
    default logger does (its ``exception`` is ``error`` with ``exc_info=True``)."""
    if method == "exception":
        event.setdefault("exc_info", True)
    return event


def _json_default(value: Any) -> Any:
    """What structlog's JSONRenderer does with a value JSON has no type for: its ``__structlog__()``, else
    its repr (structlog's own fallback imports its deprecated threadlocal module for a check the hook
    never needs)."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


def make_logger(log_file: str, **context: Any) -> Logger:
    structlog = _structlog()  # imported here: only the programs that log pay

    stream = None if log_file == "syslog" else open_log_file(log_file)
    target: Any = structlog.WriteLogger(stream) if stream is not None else SyslogLogger()
    processors = structlog.processors
    chain: list[Any] = [
        processors.add_log_level,
        processors.TimeStamper(fmt="iso", utc=True),
        exception_info,
        processors.format_exc_info,
        cap_values,
        processors.JSONRenderer(sort_keys=False, default=_json_default),
    ]
    proxy = structlog.wrap_logger(
        target, processors=chain, wrapper_class=structlog.BoundLogger, context_class=dict
    )
    logger: Logger = proxy.bind(pid=os.getpid(), **context)
    return logger

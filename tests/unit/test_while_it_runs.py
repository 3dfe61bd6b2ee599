"""What the hook does while its checkpointer runs (commands.checkpoint._WhileItRuns): the checkpointer's
pid recorded at once, its version asked in a thread of its own, the post-dump modules imported; the
version is the answer that thread got, and a version that cannot be had never fails the call."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest

from mom_checkpoint.commands import checkpoint
from mom_checkpoint.environment import Runner


class FakeIncoming:
    def __init__(self) -> None:
        self.recorded: list[int] = []

    def record_checkpointer(self, pid: int) -> None:
        self.recorded.append(pid)


def test_the_version_is_asked_while_the_checkpointer_runs() -> None:
    incoming = FakeIncoming()
    asked: list[tuple[str, float]] = []

    def ask() -> str:
        asked.append((threading.current_thread().name, time.monotonic()))
        return "4.1.1"

    meanwhile = checkpoint._WhileItRuns(incoming, ask)  # type: ignore[arg-type]
    completed = Runner().run(["/bin/sleep", "0.5"], timeout_s=60, on_start=meanwhile)
    ended = time.monotonic()
    assert completed.returncode == 0
    assert meanwhile.version() == "4.1.1"
    [(thread, when)] = asked
    assert thread == "checkpointer-version"
    assert when < ended - 0.3, "the version was asked after the checkpointer, not while it ran"
    assert len(incoming.recorded) == 1
    assert set(checkpoint.AFTER_THE_DUMP) <= set(sys.modules)


def test_a_version_that_cannot_be_had_is_unknown() -> None:
    def broken() -> str:
        raise OSError("criu --version: no such file")

    meanwhile = checkpoint._WhileItRuns(FakeIncoming(), broken)  # type: ignore[arg-type]
    meanwhile(4711)
    assert meanwhile.version() == "unknown"


@pytest.mark.parametrize("answer", ["3.19", "unknown"])
def test_a_checkpointer_that_never_started_is_asked_then(answer: str) -> None:
    calls: list[Any] = []

    def ask() -> str:
        calls.append(threading.current_thread() is threading.main_thread())
        return answer

    meanwhile = checkpoint._WhileItRuns(FakeIncoming(), ask)  # type: ignore[arg-type]
    assert meanwhile.version() == answer
    assert calls == [True]

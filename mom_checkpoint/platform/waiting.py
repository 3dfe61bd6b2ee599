"""Waiting for something that happens on its own (a process ending, a pid freed), never for longer
than given."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(
    probe: Callable[[], T],
    until: Callable[[T], bool],
    timeout_s: float,
    *,
    interval_s: float = 0.05,
    sleep: Callable[[float], object] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> T:
    """``probe()`` every ``interval_s`` until ``until`` accepts what it says or ``timeout_s`` has
    passed (it is asked at least once): its last answer."""
    deadline = monotonic() + timeout_s
    while True:
        answer = probe()
        if until(answer) or monotonic() >= deadline:
            return answer
        sleep(interval_s)

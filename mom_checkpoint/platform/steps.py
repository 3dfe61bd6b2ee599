"""How long each named step of a call took, for its log: the record a person (and the benchmark)
reads to see where a call's time went."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class Steps:
    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time what runs inside as step ``name`` (added to it, if it ran before), failed or not."""
        started = self._monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + self._monotonic() - started, 6)

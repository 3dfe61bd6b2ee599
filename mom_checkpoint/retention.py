"""Which generations to keep: a pure function that says why each one is kept or dropped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Numbered(Protocol):
    @property
    def number(self) -> int: ...


G = TypeVar("G", bound=Numbered)


@dataclass(frozen=True)
class Verdict(Generic[G]):
    item: G
    keep: bool
    reason: str


def plan(generations: Sequence[G], keep: int) -> list[Verdict[G]]:
    """Keep the ``keep`` newest complete generations (by generation number), newest first."""
    if keep < 1:
        raise ValueError("keep must be at least 1: the newest complete generation is never pruned")
    ordered = sorted(generations, key=lambda g: g.number, reverse=True)
    verdicts = []
    for rank, generation in enumerate(ordered, start=1):
        if rank == 1:
            verdicts.append(Verdict(generation, True, "newest complete generation"))
        elif rank <= keep:
            verdicts.append(Verdict(generation, True, f"one of the {keep} newest (keep={keep})"))
        else:
            verdicts.append(Verdict(generation, False, f"older than the {keep} newest (keep={keep})"))
    return verdicts

"""Which generations to keep: a pure function that says why each one is kept or dropped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import msgspec


class Numbered(Protocol):
    @property
    def number(self) -> int: ...


G = TypeVar("G", bound=Numbered)
T = TypeVar("T")


class Verdict(msgspec.Struct, Generic[T], frozen=True):
    item: T
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


class Candidate(msgspec.Struct, frozen=True):
    """What prune needs to know about one folder of the spool."""

    key: str  # its path
    job_id: str
    status: str  # an inventory status
    number: int | None
    age_s: float
    job_running: bool


def plan_prune(
    candidates: Sequence[Candidate],
    *,
    keep: int | None,
    older_than_s: float | None,
    include_running: bool = False,
) -> list[Verdict[Candidate]]:
    """Which folders ``prune`` removes, each with its reason.

    Complete generations beyond the ``keep`` newest of their job, or older than ``older_than_s``, go;
    the newest complete generation of a job that still runs stays unless ``include_running``.
    Stale incoming folders and leftovers of an interrupted prune always go; a live incoming folder,
    an unpublished image and a broken generation are never touched (a person must look at those).
    """
    if keep is not None and keep < 1:
        raise ValueError("keep must be at least 1")
    verdicts: list[Verdict[Candidate]] = []
    by_job: dict[str, list[Candidate]] = {}
    for item in candidates:
        if item.status == "complete" and item.number is not None:
            by_job.setdefault(item.job_id, []).append(item)
        elif item.status in ("stale", "pruning"):
            verdicts.append(Verdict(item, False, f"{item.status} folder left by a run that ended"))
        elif item.status == "incoming":
            verdicts.append(Verdict(item, True, "being written by a running checkpoint"))
        else:
            verdicts.append(Verdict(item, True, f"{item.status}: left for a person to look at"))
    for generations in by_job.values():
        ordered = sorted(generations, key=lambda g: g.number or 0, reverse=True)
        for rank, item in enumerate(ordered, start=1):
            if rank == 1 and item.job_running and not include_running:
                verdicts.append(Verdict(item, True, "newest complete generation of a job that still runs"))
            elif keep is not None and rank > keep:
                verdicts.append(Verdict(item, False, f"older than the {keep} newest (keep={keep})"))
            elif older_than_s is not None and item.age_s > older_than_s:
                verdicts.append(Verdict(item, False, f"older than {_duration(older_than_s)}"))
            elif keep is not None:
                verdicts.append(Verdict(item, True, f"one of the {keep} newest (keep={keep})"))
            else:
                verdicts.append(Verdict(item, True, f"not older than {_duration(older_than_s or 0)}"))
    return verdicts


def parse_duration(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w' (or a plain number of seconds) -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value = text.strip().lower()
    factor = units.get(value[-1:])
    number = value[:-1] if factor is not None else value
    try:
        seconds = float(number) * (factor or 1)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 12h, 7d, 2w)") from None
    if not seconds > 0 or math.isinf(seconds):  # also refuses NaN
        raise ValueError(f"a duration must be more than 0, got {text!r}")
    return seconds


def _duration(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"

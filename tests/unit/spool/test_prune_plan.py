"""retention.plan_prune and parse_duration: pure logic, every folder gets one verdict with a reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mom_checkpoint.spool.retention import Candidate, parse_duration, plan_prune

DAY = 86400.0


def gen(job: str, number: int, age_days: float, running: bool = False) -> Candidate:
    return Candidate(f"/spool/1.{job}/{number:06d}", job, "complete", number, age_days * DAY, running)


def verdicts(candidates: list[Candidate], **kw: object) -> dict[str, tuple[bool, str]]:
    return {v.item.key: (v.keep, v.reason) for v in plan_prune(candidates, **kw)}  # type: ignore[arg-type]


def test_keep_n_per_job_protects_a_running_jobs_newest() -> None:
    plan = verdicts(
        [gen("a", 1, 3), gen("a", 2, 2), gen("a", 3, 1, running=True), gen("b", 7, 5), gen("b", 8, 4)],
        keep=1,
        older_than_s=None,
    )
    assert plan["/spool/1.a/000003"] == (True, "newest complete generation of a job that still runs")
    assert plan["/spool/1.a/000002"] == (False, "older than the 1 newest (keep=1)")
    assert plan["/spool/1.b/000008"] == (True, "one of the 1 newest (keep=1)")
    assert plan["/spool/1.b/000007"][0] is False


def test_older_than_removes_even_the_newest_of_an_ended_job() -> None:
    plan = verdicts(
        [gen("a", 1, 10), gen("a", 2, 9, running=True), gen("b", 1, 10)], keep=None, older_than_s=7 * DAY
    )
    assert plan["/spool/1.a/000001"] == (False, "older than 1w")
    assert plan["/spool/1.a/000002"][0] is True
    assert plan["/spool/1.b/000001"] == (False, "older than 1w")
    plan = verdicts([gen("a", 2, 9, running=True)], keep=None, older_than_s=7 * DAY, include_running=True)
    assert plan["/spool/1.a/000002"][0] is False


def test_leftovers_go_and_what_a_person_must_see_stays() -> None:
    items = [
        Candidate("/s/stale", "a", "stale", None, 1.0, False),
        Candidate("/s/pruning", "a", "pruning", None, 1.0, False),
        Candidate("/s/incoming", "a", "incoming", None, 1.0, True),
        Candidate("/s/unpublished", "a", "unpublished", None, 1e9, False),
        Candidate("/s/broken", "a", "broken", 3, 1e9, False),
    ]
    plan = verdicts(items, keep=1, older_than_s=1.0)
    assert not plan["/s/stale"][0] and not plan["/s/pruning"][0]
    assert plan["/s/incoming"] == (True, "being written by a running checkpoint")
    assert plan["/s/unpublished"][0] and plan["/s/broken"][0]


def test_keep_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan_prune([gen("a", 1, 1)], keep=0, older_than_s=None)


@given(
    numbers=st.lists(st.integers(min_value=1, max_value=10_000), unique=True, max_size=30),
    keep=st.integers(min_value=1, max_value=10),
    running=st.booleans(),
)
def test_every_generation_gets_one_verdict_and_the_newest_keep_stay(
    numbers: list[int], keep: int, running: bool
) -> None:
    items = [gen("a", n, 1, running) for n in numbers]
    plan = plan_prune(items, keep=keep, older_than_s=None)
    assert sorted(v.item.number or 0 for v in plan) == sorted(numbers)
    kept = sorted((v.item.number or 0 for v in plan if v.keep), reverse=True)
    assert kept == sorted(numbers, reverse=True)[:keep]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("45", 45)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0", "-3d", "nanh", "infd", "3x"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)

"""schedule.plan: which running jobs a tick asks TORQUE to checkpoint, with a fake clock (pure logic)."""

from __future__ import annotations

import itertools

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from mom_checkpoint.batch.schedule import (
    RETRY_S,
    TOLERANCE_S,
    Decision,
    JobRecord,
    NodeView,
    Settings,
    format_duration,
    plan,
)
from mom_checkpoint.batch.torque import TorqueJob

NOW = 1_800_000_000.0
MIN = 60.0
DEFAULT = Settings(default_interval_s=10 * MIN, max_qchkpt=8)


def job(job_id: str, checkpoint: str | None = "c=10", *, started: float = 3600.0,
        checkpointed: float | None = None, state: str = "R", host: str = "node01") -> TorqueJob:  # fmt: skip
    """A job started ``started`` seconds before NOW, last checkpointed ``checkpointed`` seconds before."""
    return TorqueJob(
        job_id=job_id,
        state=state,
        checkpoint=checkpoint,
        checkpoint_time=NOW - checkpointed if checkpointed is not None else None,
        start_time=NOW - started,
        exec_host=f"{host}/0-3",
    )


def decide(
    jobs: list[TorqueJob],
    records: dict[str, JobRecord] | None = None,
    views: dict[str, NodeView] | None = None,
    options: Settings = DEFAULT,
    now: float = NOW,
) -> dict[str, Decision]:
    return {d.job_id: d for d in plan(jobs, records or {}, views or {}, options, now).decisions}


def test_due_and_not_due_by_c_n() -> None:
    d = decide([job("1.h", checkpointed=601), job("2.h", checkpointed=594), job("3.h", checkpointed=600)])
    assert d["1.h"].action == "qchkpt"
    assert d["1.h"].reason.startswith("due: last checkpoint (checkpoint_time)")
    assert d["2.h"].action == "wait" and d["2.h"].reason.startswith("due in 6s")
    assert d["3.h"].action == "qchkpt"  # exactly one interval later
    assert d["1.h"].interval_s == 600 and d["1.h"].interval_source == "c=10"


def test_a_tick_a_little_early_does_not_wait_a_whole_tick_more() -> None:
    """Issue 13 #6: a tick 59.6 s after the last qchkpt of an interval=1 job did nothing (a 2-minute
    gap); within TOLERANCE_S of being due is due."""
    jobs = [job("1.h", "enabled,periodic,interval=1", checkpointed=3600), job("2.h", "c=1", started=59.6)]
    d = decide(jobs, {"1.h": JobRecord(asked=NOW - 59.6)})
    assert d["1.h"].action == "qchkpt" and d["2.h"].action == "qchkpt"  # the first: from the job's start


def test_c_n_periodic_interval_and_the_nodes_checkpoint_interval() -> None:
    jobs = [
        job("1.h", "c=5", started=6 * MIN),
        job("2.h", "enabled,periodic,interval=30", started=29 * MIN),
        job("3.h", "enabled,periodic", started=11 * MIN),
        job("4.h", "c", started=11 * MIN),
        job("5.h", "enabled,periodic", started=11 * MIN),
    ]
    d = decide(jobs)
    assert (d["1.h"].action, d["1.h"].interval_source, d["1.h"].interval_s) == ("qchkpt", "c=5", 300)
    assert (d["2.h"].action, d["2.h"].interval_source) == ("wait", "interval=30")
    assert (d["3.h"].action, d["3.h"].interval_source, d["3.h"].interval_s) == (
        "qchkpt", "$checkpoint_interval", 600)  # fmt: skip
    assert d["4.h"].action == "qchkpt" and d["4.h"].interval_source == "$checkpoint_interval"
    longer = msgspec.structs.replace(DEFAULT, default_interval_s=15 * MIN)
    assert decide(jobs, options=longer)["5.h"].action == "wait"


def test_the_first_checkpoint_is_one_interval_into_the_job_as_pbs_mom_does() -> None:
    d = decide([job("1.h", started=9 * MIN), job("2.h", started=10 * MIN)])
    assert d["1.h"].action == "wait" and d["1.h"].last_source == "job start"
    assert d["2.h"].action == "qchkpt"


def test_jobs_that_ask_for_no_periodic_checkpoints_are_skipped_saying_why() -> None:
    d = decide([job("1.h", "enabled"), job("2.h", None), job("3.h", "s"), job("4.h", "c=0")])
    skipped = Decision("1.h", "skip", "no periodic checkpoints asked (Checkpoint = enabled)", "enabled")
    assert d["1.h"] == skipped
    assert d["2.h"].reason == "no periodic checkpoints asked (no Checkpoint attribute)"
    assert d["3.h"].action == "skip"
    assert d["4.h"].action == "skip" and "interval 0" in d["4.h"].reason


def test_periodic_without_c_or_enabled_is_reported_once() -> None:
    jobs = [job("1.h", "periodic,interval=10", started=3600)]
    first = decide(jobs)["1.h"]
    assert first.action == "report"
    assert "TORQUE refuses qchkpt for it" in first.reason
    assert "resubmit with -c enabled,periodic,interval=10" in first.reason
    again = decide(jobs, {"1.h": JobRecord(reported=NOW - 60)})["1.h"]
    assert again.action == "skip" and again.reason.endswith("(reported before)")


def test_never_two_qchkpt_within_the_interval_although_checkpoint_time_lags() -> None:
    jobs = [job("1.h", checkpointed=3600)]  # pbs_mom has not recorded the checkpoint we asked for yet
    assert decide(jobs, {"1.h": JobRecord(asked=NOW - 594)})["1.h"].action == "wait"
    d = decide(jobs, {"1.h": JobRecord(asked=NOW - 600)})["1.h"]
    assert d.action == "qchkpt" and d.last_source == "our qchkpt"


def test_our_newest_generation_counts_as_the_last_checkpoint() -> None:
    jobs = [job("1.h", started=3600)]
    d = decide(jobs, views={"1.h": NodeView(last_generation=NOW - 120)})["1.h"]
    assert d.action == "wait" and d.last_source == "last checkpoint (our spool)"
    assert d.due_at == NOW - 120 + 600


def test_a_refused_qchkpt_is_tried_again_after_at_most_retry_s() -> None:
    jobs = [job("1.h", "c=60", started=7200)]
    refused = {"1.h": JobRecord(refused=NOW - 60, error="qchkpt failed")}
    d = decide(jobs, refused)["1.h"]
    assert d.action == "wait" and "qchkpt refused 1m00s ago" in d.reason
    assert d.due_at == NOW - 60 + RETRY_S
    assert decide(jobs, {"1.h": JobRecord(refused=NOW - RETRY_S)})["1.h"].action == "qchkpt"
    short = [job("2.h", "c=2", started=7200)]
    assert decide(short, {"2.h": JobRecord(refused=NOW - 120)})["2.h"].action == "qchkpt"
    # an accepted qchkpt after the refusal: the interval counts from that one
    later = {"1.h": JobRecord(asked=NOW - 30, refused=NOW - 90)}
    assert decide(jobs, later)["1.h"].due_at == NOW - 30 + 3600


def test_the_cap_takes_the_most_overdue_first_and_defers_the_rest() -> None:
    jobs = [job(f"{n}.h", checkpointed=600 + n * 60) for n in range(1, 6)]
    capped = msgspec.structs.replace(DEFAULT, max_qchkpt=2)
    result = plan(jobs, {}, {}, capped, NOW)
    asked = [d.job_id for d in result.decisions if d.action == "qchkpt"]
    assert asked == ["4.h", "5.h"]
    deferred = [d for d in result.decisions if d.action == "defer"]
    assert [d.job_id for d in deferred] == ["1.h", "2.h", "3.h"]
    assert all(d.reason.endswith("tick_max_qchkpt=2 reached: next tick") for d in deferred)
    assert [d.job_id for d in result.decisions] == sorted(d.job_id for d in result.decisions)


def test_only_running_jobs_and_with_this_node_only_those_whose_first_exec_host_is_here() -> None:
    jobs = [
        job("1.h", host="node01.cluster.example"),
        job("2.h", host="node02"),
        job("3.h", state="Q"),
        job("4.h", state="C"),
        msgspec.structs.replace(job("5.h"), exec_host="node02/0+node01/1"),
        msgspec.structs.replace(job("6.h"), exec_host=None),
    ]
    here = msgspec.structs.replace(DEFAULT, scope="this-node", host="NODE01")
    result = plan(jobs, {}, {}, here, NOW)
    assert [d.job_id for d in result.decisions] == ["1.h"]
    assert (result.jobs, result.running, result.elsewhere) == (6, 1, 3)
    everywhere = plan(jobs, {}, {}, DEFAULT, NOW)
    assert [d.job_id for d in everywhere.decisions] == ["1.h", "2.h", "5.h", "6.h"]


def test_a_checkpoint_running_now_is_waited_for() -> None:
    d = decide([job("1.h", checkpointed=3600)], views={"1.h": NodeView(checkpointing=True)})["1.h"]
    assert d.action == "wait" and d.reason.startswith("a checkpoint of it is running now")


def test_a_job_id_unsafe_as_a_file_name_is_left_alone() -> None:
    d = decide([job("../../etc.h"), job("-rf.h")])
    assert all(x.action == "skip" and "not safe" in x.reason for x in d.values())


def test_no_time_known_at_all_means_due_now() -> None:
    bare = msgspec.structs.replace(job("1.h"), start_time=None)
    d = decide([bare])["1.h"]
    assert d.action == "qchkpt" and d.reason.startswith("due: no checkpoint or start known")


def test_advised_interval_for_jobs_without_a_number() -> None:
    advised = msgspec.structs.replace(DEFAULT, advised_interval=True, mtbf_s=24 * 3600)
    views = {"1.h": NodeView(cost_s=300.0), "2.h": NodeView(cost_s=300.0), "3.h": NodeView()}
    jobs = [job("1.h", "c"), job("2.h", "c=10"), job("3.h", "enabled,periodic")]
    d = decide(jobs, views=views, options=advised)
    assert round((d["1.h"].interval_s or 0) / 60, 1) == 116.7  # Daly, delta = 5 min, M = 24 h
    assert d["1.h"].interval_source == "Daly's interval for a 300 s checkpoint"
    assert d["2.h"].interval_source == "c=10"  # a job's own number always wins
    assert d["3.h"].interval_source == "$checkpoint_interval"  # no measurement yet
    tiny = decide([job("1.h", "c")], views={"1.h": NodeView(cost_s=0.001)}, options=advised)["1.h"]
    assert tiny.interval_s == 60  # never below a minute: the tick runs every minute


@settings(max_examples=60, deadline=None)
@given(
    interval_min=st.integers(min_value=1, max_value=90),
    lag_s=st.integers(min_value=0, max_value=900),
    started_s=st.integers(min_value=0, max_value=7200),
    jitter=st.lists(st.integers(min_value=0, max_value=20), min_size=240, max_size=240),
)
def test_ticks_every_minute_never_ask_twice_within_an_interval(
    interval_min: int, lag_s: int, started_s: int, jitter: list[int]
) -> None:
    """Simulated: a tick every minute (a few seconds late at times); pbs_mom records checkpoint_time
    ``lag_s`` after each accepted qchkpt; between two qchkpt there is always at least one interval,
    and a job is never left more than an interval plus a tick without one."""
    interval = interval_min * 60.0
    start = NOW - started_s
    record, checkpoint_time = JobRecord(), None
    asked_at: list[float] = []
    for minute, late in enumerate(jitter):
        now = NOW + minute * 60.0 + late
        if asked_at and now >= asked_at[-1] + lag_s:
            checkpoint_time = asked_at[-1]  # the checkpoint's start, as pbs_mom records it
        current = TorqueJob("1.h", "R", f"c={interval_min}", checkpoint_time, start, "node01/0")
        d = plan([current], {"1.h": record}, {}, DEFAULT, now).decisions[0]
        if d.action == "qchkpt":
            asked_at.append(now)
            record = msgspec.structs.replace(record, asked=now)
    gaps = [b - a for a, b in itertools.pairwise(asked_at)]
    assert all(gap >= interval - TOLERANCE_S for gap in gaps)
    assert all(gap <= interval + 60 + 20 for gap in gaps)
    assert asked_at and asked_at[0] <= max(start + interval, NOW) + 60 + 20


def test_durations_for_people() -> None:
    assert [format_duration(s) for s in (0, 45, 60, 545, 3600, 7800, 2 * 86400 + 3600)] == [
        "0s", "45s", "1m00s", "9m05s", "1h00m", "2h10m", "2d1h",
    ]  # fmt: skip

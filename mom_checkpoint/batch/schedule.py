"""Which running jobs ``tick`` asks TORQUE to checkpoint now: a pure function that says why for each.

A job is due when its interval has passed since the newest of: its ``checkpoint_time`` (pbs_mom sets
it after a good checkpoint), our newest complete generation of it in the spool, our own last accepted
``qchkpt`` for it (checkpoint_time lags: the checkpoint runs after qchkpt returns), and, before any
of these, its start (pbs_mom's own timer also first fires one interval into the job). Never two
``qchkpt`` for one job within its interval; a refused one is tried again after at most
``RETRY_S``. At most ``max_qchkpt`` jobs per tick, the most overdue first; the others wait.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

from mom_checkpoint.batch.calls import path_part
from mom_checkpoint.batch.torque import CheckpointSpec, TorqueJob, parse_checkpoint, short_host
from mom_checkpoint.platform.errors import UsageError

Action = Literal["qchkpt", "wait", "defer", "report", "skip"]
RETRY_S = 300.0  # a refused qchkpt is tried again after this long (or the job's interval if shorter)
TOLERANCE_S = 5.0  # a job due within this is due now: a timer's tick comes a little early or late


class JobRecord(msgspec.Struct, frozen=True):
    """What earlier ticks did for a job (the tick's state file)."""

    asked: float | None = None  # the last qchkpt that TORQUE accepted
    refused: float | None = None  # the last qchkpt that failed
    error: str = ""  # what it said then
    reported: float | None = None  # when we said that qchkpt cannot checkpoint the job


class NodeView(msgspec.Struct, frozen=True):
    """What this node knows of a job beyond TORQUE: our spool, a checkpoint running now."""

    last_generation: float | None = None  # start of our newest complete generation of the job
    checkpointing: bool = False  # a checkpoint of the job holds its lock now
    cost_s: float | None = None  # its measured checkpoint cost (for tick_advised_interval)


class Settings(msgspec.Struct, frozen=True):
    default_interval_s: float  # $checkpoint_interval
    max_qchkpt: int
    scope: Literal["this-node", "all"] = "all"
    host: str = ""  # this node's name, for scope "this-node"
    advised_interval: bool = False
    mtbf_s: float = 0.0


class Decision(msgspec.Struct, frozen=True):
    job_id: str
    action: Action
    reason: str
    checkpoint: str = ""  # the job's Checkpoint attribute
    interval_s: float | None = None
    interval_source: str = ""
    last: float | None = None  # the newest checkpoint (or start) the decision counts from
    last_source: str = ""
    due_at: float | None = None
    result: str = ""  # filled in once the qchkpt ran: "accepted" or why it failed


class Plan(msgspec.Struct, frozen=True):
    decisions: list[Decision]
    jobs: int  # every job qstat listed
    running: int  # of them running (on this node, for scope "this-node")
    elsewhere: int = 0  # running on other nodes (scope "this-node")

    def count(self, action: Action) -> int:
        return sum(1 for d in self.decisions if d.action == action)


def plan(
    jobs: Sequence[TorqueJob],
    records: Mapping[str, JobRecord],
    views: Mapping[str, NodeView],
    settings: Settings,
    now: float,
) -> Plan:
    decisions: list[Decision] = []
    due: list[Decision] = []
    running = elsewhere = 0
    for job in sorted(jobs, key=lambda j: j.job_id):
        if not job.running:
            continue
        if settings.scope == "this-node" and not _here(job, settings.host):
            elsewhere += 1
            continue
        running += 1
        record, view = records.get(job.job_id, JobRecord()), views.get(job.job_id, NodeView())
        try:
            decision = _decide(job, record, view, settings, now)
        except (ValueError, ArithmeticError) as exc:  # one job's values never cost the others
            decision = Decision(job.job_id, "skip", f"cannot plan for it: {type(exc).__name__}: {exc}"[:300])
        (due if decision.action == "qchkpt" else decisions).append(decision)
    due.sort(key=lambda d: (d.due_at or 0.0, d.job_id))
    cap = f"tick_max_qchkpt={settings.max_qchkpt} reached: next tick"
    decisions += due[: settings.max_qchkpt]
    decisions += [_with(d, action="defer", reason=f"{d.reason}; {cap}") for d in due[settings.max_qchkpt :]]
    return Plan(sorted(decisions, key=lambda d: d.job_id), len(jobs), running, elsewhere)


def _here(job: TorqueJob, host: str) -> bool:
    mother = job.mother_superior
    return mother is not None and bool(host) and short_host(mother) == short_host(host)


def _decide(job: TorqueJob, record: JobRecord, view: NodeView, settings: Settings, now: float) -> Decision:
    spec = parse_checkpoint(job.checkpoint)
    base = Decision(job.job_id, "skip", "", checkpoint=spec.raw)
    if not safe_job_id(job.job_id):
        return _with(base, reason="job id not safe to use as a file name: left alone")
    if not spec.asks_periodic:
        what = f"Checkpoint = {spec.raw}" if spec.raw else "no Checkpoint attribute"
        return _with(base, reason=f"no periodic checkpoints asked ({what})")
    if not spec.periodic:
        return _with(base, reason=f"interval 0 in Checkpoint = {spec.raw}: no periodic checkpoints")
    if not spec.qchkpt_allowed:
        if record.reported is not None:
            return _with(base, reason=f"{not_checkpointable(spec)} (reported before)")
        return _with(base, action="report", reason=not_checkpointable(spec))
    interval_s, interval_source = interval_for(spec, view, settings)
    last, last_source = _last(job, record, view)
    due_at = (last + interval_s) if last is not None else now
    since = f"{last_source} {_ago(now - last)} ago" if last is not None else "no checkpoint or start known"
    if record.refused is not None and (record.asked is None or record.refused > record.asked):
        retry_s = min(interval_s, RETRY_S)
        if record.refused + retry_s > due_at:
            due_at = record.refused + retry_s
            again = format_duration(retry_s)
            since = f"qchkpt refused {_ago(now - record.refused)} ago, tried again after {again}"
    decision = msgspec.structs.replace(
        base,
        interval_s=interval_s,
        interval_source=interval_source,
        last=last,
        last_source=last_source,
        due_at=due_at,
    )
    every = f"every {format_duration(interval_s)} ({interval_source})"
    if view.checkpointing:
        return _with(decision, action="wait", reason=f"a checkpoint of it is running now; {every}")
    if now + TOLERANCE_S >= due_at:  # else a tick 0.4 s early waits a whole minute more
        return _with(decision, action="qchkpt", reason=f"due: {since}, {every}")
    return _with(decision, action="wait", reason=f"due in {format_duration(due_at - now)}: {since}, {every}")


def safe_job_id(job_id: str) -> bool:
    try:
        path_part("JOB_ID", job_id)
    except UsageError:
        return False
    return True


def not_checkpointable(spec: CheckpointSpec) -> str:
    return (
        f"asks for periodic checkpoints (Checkpoint = {spec.raw}) but TORQUE refuses qchkpt for it "
        f'("job is not checkpointable"): resubmit with -c enabled,{spec.raw}'
    )


def interval_for(spec: CheckpointSpec, view: NodeView, settings: Settings) -> tuple[float, str]:
    if spec.interval_min is not None:
        return spec.interval_min * 60.0, f"{spec.interval_key}={spec.interval_min}"
    if settings.advised_interval and view.cost_s and settings.mtbf_s > 0:
        from mom_checkpoint.batch.interval import daly

        advised = max(60.0, round(daly(view.cost_s, settings.mtbf_s)))
        return advised, f"Daly's interval for a {view.cost_s:.3g} s checkpoint"
    return settings.default_interval_s, "$checkpoint_interval"


def _last(job: TorqueJob, record: JobRecord, view: NodeView) -> tuple[float | None, str]:
    known = [
        (job.checkpoint_time, "last checkpoint (checkpoint_time)"),
        (view.last_generation, "last checkpoint (our spool)"),
        (record.asked, "our qchkpt"),
    ]
    times = [(t, s) for t, s in known if t is not None]
    if times:
        return max(times, key=lambda ts: ts[0])
    if job.start_time is not None:
        return job.start_time, "job start"
    return None, ""


def _with(decision: Decision, **changes: object) -> Decision:
    return msgspec.structs.replace(decision, **changes)


def _ago(seconds: float) -> str:
    return format_duration(max(0.0, seconds))


def format_duration(seconds: float) -> str:
    """'45s', '9m05s', '2h10m', '3d4h' for people."""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"

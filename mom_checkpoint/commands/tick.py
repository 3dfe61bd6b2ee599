"""``tick``: the periodic checkpoints that pbs_mom of TORQUE 5.1.2 to 6.1.x never starts itself.

Run every minute (systemd timer or cron): read the running jobs from ``qstat -t -x``, work out which
are due (mom_checkpoint.batch.schedule), and ``qchkpt`` each of those, so that pbs_mom runs the checkpoint
script the normal way. What earlier ticks did (accepted and refused qchkpt calls, jobs reported as not
checkpointable) is kept in ``<spool>/.tick/<host>.json``; a kernel lock at ``<spool>/.locks/tick-<host>.lock``
keeps two ticks of one node from overlapping. ``--dry-run`` reads and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from mom_checkpoint.batch.schedule import Decision, JobRecord, NodeView, Plan, Settings, plan, safe_job_id
from mom_checkpoint.batch.torque import TorqueJob, read_jobs, torque_environ
from mom_checkpoint.image.layout import created_epoch
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment, last_line
from mom_checkpoint.platform.errors import (
    Error,
    Refused,
    StorageIOError,
)
from mom_checkpoint.platform.files import replace_private, storage_error
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.platform.programs import find_program
from mom_checkpoint.spool.locking import exclusive, lock_dir
from mom_checkpoint.spool.storage import INCOMING_PREFIX, Spool

QCHKPT_TIMEOUT_S = 30.0
STATE_DIR = ".tick"
STATE_SCHEMA = 1


class Outcome(msgspec.Struct, frozen=True):
    dry_run: bool
    host: str
    plan: Plan
    decisions: list[Decision]  # the plan's, with the qchkpt results filled in

    @property
    def failed(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == "qchkpt" and d.result not in ("", "accepted")]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "host": self.host,
            "jobs": self.plan.jobs,
            "running": self.plan.running,
            "elsewhere": self.plan.elsewhere,
            "decisions": [msgspec.to_builtins(d) for d in self.decisions],
        }


def run(config: Config, env: Environment, log: Logger | None, *, dry_run: bool) -> Outcome:
    """One tick; ``log`` is None for a dry run (it writes nothing, not even a log line)."""
    started = env.monotonic()
    qstat = find_program(config.qstat, "qstat")
    qchkpt = find_program(config.qchkpt, "qchkpt")
    host = socket.gethostname()
    listed = read_jobs(qstat, env)
    jobs = listed.jobs
    if log is not None:
        for problem in listed.unreadable:
            log.warning("tick.job_unreadable", detail=problem[:500])
    spool = Spool(config.spool_dir)
    if dry_run:
        now = env.clock()
        result = _plan(config, spool, host, jobs, load_state(spool, host), now=now)
        return Outcome(True, host, result, result.decisions)
    spool.ensure_root()
    with tick_lock(lock_dir(spool.root), host):
        records = load_state(spool, host, log)
        now = env.clock()
        result = _plan(config, spool, host, jobs, records, now=now)
        decisions = [_act(d, qchkpt, env, log) for d in result.decisions]
        save_state(spool, host, _updated(records, decisions, jobs, now))
    outcome = Outcome(False, host, result, decisions)
    if log is not None:
        log.info(
            "tick.done", jobs=result.jobs, running=result.running, elsewhere=result.elsewhere,
            asked=result.count("qchkpt"), failed=len(outcome.failed), deferred=result.count("defer"),
            reported=result.count("report"), duration_s=round(env.monotonic() - started, 3),
        )  # fmt: skip
    return outcome


def _act(decision: Decision, qchkpt: str, env: Environment, log: Logger | None) -> Decision:
    if decision.action == "report" and log is not None:
        log.warning("tick.not_checkpointable", job_id=decision.job_id, checkpoint=decision.checkpoint,
                    detail=decision.reason)  # fmt: skip
    if decision.action == "defer" and log is not None:
        log.info("tick.deferred", job_id=decision.job_id, reason=decision.reason)
    if decision.action != "qchkpt":
        return decision
    argv = [qchkpt, decision.job_id]
    try:
        completed = env.runner.run(argv, timeout_s=QCHKPT_TIMEOUT_S, env=torque_environ(env.environ))
    except OSError as exc:
        result = f"cannot run {qchkpt}: {exc.strerror or exc}"
    else:
        if completed.timed_out:
            result = f"qchkpt did not answer within {QCHKPT_TIMEOUT_S:g}s"
        elif completed.returncode != 0:
            detail = last_line(completed.stderr) or last_line(completed.stdout) or "no message"
            result = f"qchkpt failed (exit {completed.returncode}): {detail}"
        else:
            result = "accepted"
    if log is not None:
        event = "tick.qchkpt" if result == "accepted" else "tick.qchkpt_failed"
        log.info(
            event, job_id=decision.job_id, result=result, interval_s=decision.interval_s,
            interval_source=decision.interval_source, last=decision.last, last_source=decision.last_source,
        )  # fmt: skip
    return msgspec.structs.replace(decision, result=result)


# -- what this node knows ----------------------------------------------------------------------------


def _plan(
    config: Config,
    spool: Spool,
    host: str,
    jobs: list[TorqueJob],
    records: dict[str, JobRecord],
    *,
    now: float,
) -> Plan:
    settings = Settings(
        default_interval_s=config.checkpoint_interval * 60.0,
        max_qchkpt=config.tick_max_qchkpt,
        scope=config.tick_jobs,
        host=host,
        advised_interval=config.tick_advised_interval,
        mtbf_s=config.node_mtbf_h * 3600.0,
    )
    try:
        spool.runs_of("-")  # the spool as a whole must be readable: that is the node's problem
    except Refused:
        raise StorageIOError(f"cannot read the spool {spool.root} (tick runs as root)") from None
    views = {}
    for job in jobs:
        if job.running and safe_job_id(job.job_id):
            try:
                views[job.job_id] = node_view(spool, job.job_id, now, config)
            except (OSError, Error):  # one job's leftovers: planned without what the spool says
                views[job.job_id] = NodeView()
    return plan(jobs, records, views, settings, now)


def node_view(spool: Spool, job_id: str, now: float, config: Config) -> NodeView:
    newest = spool.newest(job_id)
    last = created_epoch(newest.created) if newest else None
    cost = None
    if config.tick_advised_interval:
        from mom_checkpoint.spool.inventory import measured_cost

        with contextlib.suppress(ValueError):
            cost = measured_cost(spool, job_id)[0]
    return NodeView(last, _checkpoint_running(spool, job_id, now, config.timeout_s), cost)


def _checkpoint_running(spool: Spool, job_id: str, now: float, timeout_s: float) -> bool:
    """A generation of the job is being written (a recent incoming folder). Read-only on purpose: trying
    the job's lock could make a checkpoint that starts at that very moment fail as busy."""
    for run_dir in spool.runs_of(job_id):
        with contextlib.suppress(OSError):
            for entry in os.scandir(run_dir):
                recent = now - entry.stat(follow_symlinks=False).st_mtime < timeout_s + 60
                if entry.name.startswith(INCOMING_PREFIX) and recent:
                    return True
    return False


# -- the state of earlier ticks, and the lock ---------------------------------------------------------


def state_path(spool: Spool, host: str) -> Path:
    return spool.root / STATE_DIR / f"{_file_host(host)}.json"


def _file_host(host: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in host) or "localhost"


def load_state(spool: Spool, host: str, log: Logger | None = None) -> dict[str, JobRecord]:
    path = state_path(spool, host)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
            raise ValueError(f"not a schema {STATE_SCHEMA} tick state")
        return {str(k): JobRecord(**v) for k, v in data["jobs"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        # Losing the record costs at most one early qchkpt per job: TORQUE's checkpoint_time still counts.
        if log is not None:
            log.warning("tick.state_unreadable", path=str(path), error=repr(exc))
        return {}


def save_state(spool: Spool, host: str, records: Mapping[str, JobRecord]) -> None:
    path = state_path(spool, host)
    data = {"schema": STATE_SCHEMA, "jobs": {k: msgspec.to_builtins(v) for k, v in sorted(records.items())}}
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        replace_private(path, json.dumps(data, indent=1) + "\n")
    except OSError as exc:
        raise storage_error(exc, f"cannot record what this tick did in {path}") from None


def _updated(
    records: Mapping[str, JobRecord], decisions: list[Decision], jobs: list[TorqueJob], now: float
) -> dict[str, JobRecord]:
    """Records of jobs qstat still lists, with what this tick did."""
    listed = {job.job_id for job in jobs}
    updated = {job_id: record for job_id, record in records.items() if job_id in listed}
    for decision in decisions:
        record = updated.get(decision.job_id, JobRecord())
        if decision.action == "report":
            record = msgspec.structs.replace(record, reported=now)
        elif decision.action == "qchkpt" and decision.result == "accepted":
            record = msgspec.structs.replace(record, asked=now, error="")
        elif decision.action == "qchkpt":
            record = msgspec.structs.replace(record, refused=now, error=decision.result)
        else:
            continue
        updated[decision.job_id] = record
    return updated


def tick_lock(directory: Path, host: str) -> contextlib.AbstractContextManager[None]:
    """Hold this node's tick lock, or raise Busy at once naming the tick that holds it."""
    return exclusive(directory / f"tick-{_file_host(host)}.lock", ["tick"], "another tick")

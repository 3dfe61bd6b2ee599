"""``advise``: the checkpoint interval that pays off (Young, Daly) and what the current one costs.

The checkpoint cost (delta) of a job is measured from its manifests: the median ``times.dump_s`` of
its newest complete generations, the wall time the checkpointer ran. That is the time the job stands
still: CRIU keeps the process tree frozen while it dumps it, chkpnt and cr_checkpoint stop it too.
``times.total_s`` is not used: it adds the hashing and fsync done after the job was let go, which
cost the job nothing (and ``frozen_s`` is only known where CRIU reports it).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from mom_checkpoint.batch import interval
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import Error, NoCheckpoint, StorageIOError, UsageError
from mom_checkpoint.spool.inventory import measured_cost
from mom_checkpoint.spool.storage import Spool


class Report(msgspec.Struct, frozen=True):
    job_id: str | None
    cost_source: str
    samples: int
    mtbf_source: str
    interval_source: str  # where the current interval comes from (or why there is none)
    advice: interval.Advice

    def as_dict(self) -> dict[str, Any]:
        a = self.advice

        def option(o: interval.Option | None, source: str) -> dict[str, Any] | None:
            if o is None:
                return None
            return {"interval_min": round(o.interval_s / 60, 3), "waste": round(o.waste, 6), "source": source}

        return {
            "job_id": self.job_id,
            "cost_s": a.cost_s,
            "cost_source": self.cost_source,
            "samples": self.samples,
            "mtbf_h": a.mtbf_s / 3600,
            "mtbf_source": self.mtbf_source,
            "current": option(a.current, self.interval_source),
            "young": option(a.young, "sqrt(2 delta M)"),
            "daly": option(a.daly, "Daly 2006" if not a.cost_at_least_2m else "M (delta >= 2M)"),
            "suggested_interval_min": a.suggested_minutes,
            "waste_model": interval.WASTE_MODEL,
        }


def run(
    config: Config,
    env: Environment,
    *,
    job_id: str | None,
    cost_s: float | None,
    mtbf_h: float | None,
    interval_min: float | None,
) -> Report:
    for name, value in (("--cost", cost_s), ("--mtbf", mtbf_h), ("--interval", interval_min)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{name} must be a number above 0, got {value:g}")
    if job_id is None and cost_s is None:
        raise UsageError("give a JOB_ID, or --cost SECONDS")
    if mtbf_h is not None:
        mtbf_source = "--mtbf"
    elif config.node_mtbf_h > 0:
        mtbf_h, mtbf_source = config.node_mtbf_h, f"node_mtbf_h in {config.source}"
    else:
        raise UsageError(f"no node MTBF known: give --mtbf HOURS, or set node_mtbf_h in {config.source}")
    samples = 0
    if cost_s is not None:
        cost_source = "--cost"
    else:
        assert job_id is not None
        spool = Spool(config.spool_dir)
        try:
            cost_s, samples = measured_cost(spool, job_id)
        except ValueError:
            raise NoCheckpoint(
                f"job {job_id} has no complete checkpoint in {spool.root} to measure its cost from: "
                f"give --cost SECONDS"
            ) from None
        except PermissionError as exc:
            raise StorageIOError(
                f"cannot read the spool {spool.root}: {exc.strerror} (run as root)"
            ) from None
        cost_source = f"median dump time of its {samples} newest generation{'s' if samples != 1 else ''}"
    current_s, interval_source = _current(config, env, job_id, interval_min)
    advice = interval.advise(cost_s, mtbf_h * 3600, current_s)
    return Report(job_id, cost_source, samples, mtbf_source, interval_source, advice)


def _current(
    config: Config, env: Environment, job_id: str | None, interval_min: float | None
) -> tuple[float | None, str]:
    """The current interval: --interval, else the job's Checkpoint attribute, else $checkpoint_interval."""
    default = (config.checkpoint_interval * 60.0, "$checkpoint_interval (config checkpoint_interval)")
    if interval_min is not None:
        return interval_min * 60, "--interval"
    if job_id is None:
        return default
    from mom_checkpoint.batch.schedule import NodeView, Settings, interval_for
    from mom_checkpoint.batch.torque import parse_checkpoint, read_jobs
    from mom_checkpoint.platform.programs import find_program

    try:
        jobs = read_jobs(find_program(config.qstat, "qstat"), env, job_id).jobs
    except Error as exc:
        return default[0], f"{default[1]}; qstat could not tell the job's own: {exc.message}"
    if len(jobs) != 1:
        return default[0], f"{default[1]}; qstat did not list job {job_id}"
    spec = parse_checkpoint(jobs[0].checkpoint)
    if not spec.periodic:
        raw = f"Checkpoint = {spec.raw}" if spec.raw else "no Checkpoint attribute"
        return None, f"none: the job asks for no periodic checkpoints ({raw})"
    seconds, source = interval_for(spec, NodeView(), Settings(config.checkpoint_interval * 60.0, 1))
    return seconds, f"the job's Checkpoint = {spec.raw} ({source})"

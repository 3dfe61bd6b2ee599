"""A hook call timed from the hook's own record: where its time goes, step by step.

Every successful checkpoint logs ``checkpoint.done`` with ``steps`` (seconds per named step of the call,
mom_checkpoint.commands.checkpoint) and ``total_s`` (from just before the first step to the record). What
the hook does not record, the interpreter's start, the imports and main() as a whole, is timed at the
public edges only: TIMED_CALL, a copy of the installed script, times its imports and its call of the public
main() with the 8 arguments, and writes those times (and its own peak RSS) to $BENCH_CALL_OUT. Nothing of
the package is patched; only the standard library's os.fsync is wrapped, to count the call's fsyncs.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tests.helpers import Job, Site

from .core import HOOK_IMPORTS, PACKAGED_PREFIX, as_pbs_mom, check, events, python

TIMED_CALL = (
    r"""
import importlib, json, os, resource, sys, time
T0 = time.perf_counter()
"""
    + HOOK_IMPORTS
    + r"""
import mom_checkpoint.cli.checkpoint as cli
T1 = time.perf_counter()
# what the hook imports while the checkpointer runs (meanwhile.AFTER_THE_DUMP): timed apart
from mom_checkpoint.commands.checkpoint.meanwhile import AFTER_THE_DUMP
for name in AFTER_THE_DUMP:
    importlib.import_module(name)
T1b = time.perf_counter()
fsync = [0.0, 0]
real_fsync = os.fsync
def counted_fsync(fd):
    started = time.perf_counter()
    try:
        return real_fsync(fd)
    finally:
        fsync[0] += time.perf_counter() - started
        fsync[1] += 1
os.fsync = counted_fsync
main_started = time.time()
T2a = time.perf_counter()
status = cli.main(sys.argv[1:])
T2 = time.perf_counter()
main_ended = time.time()
with open(os.environ["BENCH_CALL_OUT"], "w") as out:
    json.dump({
        "status": status,
        "pid": os.getpid(),
        "imports_s": T1 - T0,
        "after_dump_imports_s": T1b - T1,
        "main_s": T2 - T2a,
        "main_started": main_started,
        "main_ended": main_ended,
        "fsync_s": fsync[0],
        "fsync_calls": fsync[1],
        "maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "maxrss_children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }, out)
sys.exit(status)
"""
)

# The hook's steps (commands/checkpoint/__init__.py and attempt.py), in the order a call takes them.
STEPS = {
    "preflight": "preflight: find the processes, their identity, CHECKPOINT_DIR, the checkpointer, "
    "free space, keep",
    "lock": "lock: the job's lock, stale leftovers removed, a node slot, the quota, run folder and number",
    "dump": "dump: the checkpointer's run, the held files' and outputs' copies, its version",
    "seal": "seal: hash + fsync the image and the kept files, build and write the manifest",
    "publish": "publish (one rename + fsync)",
    "pointer": "pointer at CHECKPOINT_DIR/CHECKPOINT_NAME",
    "prune": "prune: the generations beyond keep retired",
    "end": "end: the job ended (SIGNAL 15 only)",
}


@dataclass(frozen=True)
class TimedCall:
    """One call through TIMED_CALL: its own times, and the hook's record of it (checkpoint.done)."""

    imports_s: float  # the hook's modules and libraries, before main()
    after_dump_imports_s: float  # AFTER_THE_DUMP, apart (in a real call: within the dump)
    main_s: float  # main() as a whole
    steps: dict[str, float]  # the record's steps
    total_s: float  # the record's total_s: from the first step to the record
    before_s: float  # main() before the first step: the call's arguments, the config, the log opened
    after_s: float  # main() after the record: its line written, the detached removal started, the summary
    fsync_s: float
    fsync_calls: int
    maxrss_self: float  # bytes
    maxrss_children: float  # bytes

    @property
    def between_s(self) -> float:
        """Within total_s but in no step: the incoming folder begun, the locks released."""
        return self.total_s - sum(self.steps.values())


def timed_call(site: Site, job: Job) -> TimedCall:
    """A checkpoint of ``job`` through TIMED_CALL, called the way pbs_mom calls the hook; its times and the
    hook's own record of it, read from the site's log."""
    wrapper = site.base / "timed-call.py"
    if not wrapper.exists():
        wrapper.write_text(PACKAGED_PREFIX + TIMED_CALL)
    out = site.base / "timed-call.json"
    call = as_pbs_mom(
        f"{python()} -I -S {wrapper}", site.torque_args(job), site.config, {"BENCH_CALL_OUT": str(out)}
    )
    check(call, "mom-checkpoint (timed at its public edges)")
    data: dict[str, Any] = json.loads(out.read_text())
    records = [e for e in events(site, "checkpoint.done") if e.get("pid") == data["pid"]]
    if not records:
        raise RuntimeError(f"the hook's log {site.log} has no checkpoint.done of process {data['pid']}")
    record = records[-1]
    total = float(record["total_s"])
    done_at = datetime.fromisoformat(record["timestamp"]).timestamp()  # the wall clock, as main_*
    return TimedCall(
        imports_s=float(data["imports_s"]),
        after_dump_imports_s=float(data["after_dump_imports_s"]),
        main_s=float(data["main_s"]),
        steps={str(name): float(seconds) for name, seconds in record["steps"].items()},
        total_s=total,
        before_s=max(0.0, done_at - total - float(data["main_started"])),
        after_s=max(0.0, float(data["main_ended"]) - done_at),
        fsync_s=float(data["fsync_s"]),
        fsync_calls=int(data["fsync_calls"]),
        maxrss_self=float(data["maxrss_self_kib"]) * 1024.0,
        maxrss_children=float(data["maxrss_children_kib"]) * 1024.0,
    )


@dataclass(frozen=True)
class Breakdown:
    """Medians over several TimedCalls."""

    calls: list[TimedCall]

    def median(self, figure: str) -> float:
        return statistics.median(float(getattr(call, figure)) for call in self.calls)

    def steps(self) -> dict[str, float]:
        """Each step's median, in the call's order (steps the hook adds later: after those known)."""
        names = [name for name in STEPS if any(name in call.steps for call in self.calls)]
        for call in self.calls:
            names += [name for name in call.steps if name not in names]
        return {name: statistics.median(call.steps.get(name, 0.0) for call in self.calls) for name in names}


def step_label(name: str) -> str:
    return STEPS.get(name, name)

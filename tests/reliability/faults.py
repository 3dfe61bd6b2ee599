"""Fault scenarios, each on real CRIU unless its name says otherwise.

Every scenario takes a fresh ``Site`` and a seeded ``random.Random``, raises AssertionError when the
product misbehaves, and returns the list of checks it made: ``make reliability`` runs each many times
and publishes the counts in docs/RELIABILITY.md, the test suite runs each once.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.helpers import (
    MOM_ENV,
    Job,
    Site,
    call_hook,
    crash,
    installed,
    start_restart,
    verify_generation,
    wait_until_gone,
)

Scenario = Callable[[Site, random.Random], list[str]]


def _hook(site: Site, args: list[object]) -> subprocess.Popen[bytes]:
    env = {**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)}
    return subprocess.Popen(
        [str(installed("mom-checkpoint")), *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_event(site: Site, event: str, pid: int, timeout: float = 30) -> bool:
    """Wait until the hook with this pid has logged ``event`` (its structlog line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e.get("event") == event and e.get("pid") == pid for e in site.log_events()):
            return True
        time.sleep(0.002)
    return False


def _checkpointer_of(hook_pid: int, timeout: float = 30) -> psutil.Process | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = psutil.Process(hook_pid).children()
        except psutil.NoSuchProcess:
            return None
        if children:
            return children[0]
        time.sleep(0.002)
    return None


def _keeps_counting(job: Job, what: str) -> str:
    count = job.count()
    assert job.wait_count(count + 3, timeout=30) > count, f"{what}: the job stopped counting"
    return f"{what}: the job kept running"


def _all_complete(site: Site, job_id: str) -> str:
    generations = site.generations(job_id)
    for generation in generations:
        verify_generation(generation)
    return f"all {len(generations)} named generations verify against their manifests"


def _no_leftovers(site: Site) -> str:
    assert site.incoming() == [], f"incoming folders left: {site.incoming()}"
    assert site.pruning_left() == [], "what was pruned is left on disk"
    return "no incoming or pruning folder left"


def _end_session(leader: subprocess.Popen[bytes]) -> None:
    """What pbs_mom does when the job's task ends or is deleted: SIGKILL to its whole session."""
    for pid in psutil.pids():
        with contextlib.suppress(ProcessLookupError):
            if os.getsid(pid) == leader.pid:
                os.kill(pid, signal.SIGKILL)
    leader.wait(timeout=30)


def _newest_restores(site: Site, job: Job, spool: Path | None = None) -> str:
    """The job is lost with its node; mom-restart --job brings it back from the newest complete
    generation, and the application counts on from a checkpointed value, not from 1."""
    before = job.counts()
    last = before[-1] if before else 0
    crash(job)
    newest = sorted((spool or site.spool).glob(f"*.{job.job_id}/[0-9]*"), key=lambda p: p.name)[-1]
    with open(job.output, "ab") as output:  # the resume job's own output: where --job's job writes on
        restart = start_restart(["--job", job.job_id], site.config, stdout=output)
    try:
        deadline = time.monotonic() + 60
        while len(job.counts()) < len(before) + 3:
            if restart.poll() is not None:
                raise AssertionError(f"restart failed: {restart.stderr.read() if restart.stderr else ''!r}")
            assert time.monotonic() < deadline, "the restored job does not count"
            time.sleep(0.05)
        resumed = job.counts()[len(before)]
    finally:
        _end_session(restart)
    assert 1 < resumed <= last + 1, f"counting resumed at {resumed}, the job was at {last}"
    started = [e for e in site.log_events() if e.get("event") == "restart.start"]
    assert started and started[-1]["path"] == str(newest), "restart did not take the newest generation"
    return (
        "the newest complete generation restores (mom-restart --job): the count goes on from the checkpoint"
    )


PHASES = ("before the dump", "during the dump", "during hashing", "during publish", "during prune")


def kill9_hook(site: Site, rng: random.Random, phase: str | None = None) -> list[str]:
    """kill -9 of the hook at a random moment of a given (or random) phase of a real CRIU checkpoint."""
    phase = phase or rng.choice(PHASES)
    site.configure(keep=2, **{"backends.criu.run_as": "job-user"})
    job = site.start_job("1001.head", app_env={"COUNTER_MIB": "96"})
    for _ in range(2):
        assert call_hook(site.torque_args(job), site.config).returncode == 0
    newest = site.generations("1001.head")[-1]
    before = verify_generation(newest)
    hook = _hook(site, site.torque_args(job))
    if phase == "before the dump":
        time.sleep(rng.uniform(0, 0.15))
    elif phase == "during the dump":
        _checkpointer_of(hook.pid)
        time.sleep(rng.uniform(0, 0.05))
    elif phase in ("during hashing", "during publish"):
        _wait_event(site, "dump.done", hook.pid)
        time.sleep(rng.uniform(0, 0.03) if phase == "during hashing" else rng.uniform(0.03, 0.2))
    else:
        _wait_event(site, "generation.published", hook.pid)
        time.sleep(rng.uniform(0, 0.005))
    hook.send_signal(signal.SIGKILL)
    hook.wait()
    checks = [f"hook killed with -9 {phase}"]
    if newest.exists():  # a later phase may have published a new one and pruned it legitimately (keep=2)
        assert verify_generation(newest) == before, "the previous complete generation changed"
        checks.append("the previous complete generation is unchanged")
    else:
        assert len(site.generations("1001.head")) == 2, "a generation went missing"
    checks.append(_all_complete(site, "1001.head"))
    checks.append(_keeps_counting(job, "after the kill"))
    result = call_hook(site.torque_args(job), site.config)
    assert result.returncode == 0, result.stderr
    checks.append("the next checkpoint succeeds")
    checks.append(_no_leftovers(site))
    checks.append(_all_complete(site, "1001.head"))
    checks.append(_newest_restores(site, job))
    return checks


def _signal_criu_mid_dump(
    site: Site, args: list[object], sig: int, after_s: float, *, hung: str, wait_s: float = 30
) -> tuple[int, str, int]:
    """Start the hook, send ``sig`` to its checkpointer ``after_s`` into the dump (unless it has
    finished by then), and return the hook's exit status, its stderr and the checkpointer's pid.
    A hook that has not ended ``wait_s`` after the signal is killed and fails the scenario: ``hung``."""
    hook = _hook(site, args)
    criu = _checkpointer_of(hook.pid)
    assert criu is not None, "criu never started"
    time.sleep(after_s)
    with contextlib.suppress(ProcessLookupError):
        os.kill(criu.pid, sig)
    try:
        status = hook.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        hook.kill()
        hook.wait()
        raise AssertionError(f"{hung} (not ended {wait_s:g}s after the signal)") from None
    return status, hook.stderr.read().decode() if hook.stderr else "", criu.pid


def kill9_checkpointer(site: Site, rng: random.Random) -> list[str]:
    """kill -9 of criu in the middle of a dump.

    The job keeps running, except when criu dies while its parasite code runs inside the job's
    processes: that code then traps with no tracer and the process dies (CRIU's design, docs/CRIU.md).
    Then the hook says so, and the job comes back from its previous complete generation.
    """
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("1002.head", app_env={"COUNTER_MIB": "128"})
    assert call_hook(site.torque_args(job), site.config).returncode == 0  # a good one first
    [previous] = site.generations("1002.head")
    before = verify_generation(previous)
    status, stderr, _ = _signal_criu_mid_dump(
        site,
        site.torque_args(job),
        signal.SIGKILL,
        rng.uniform(0, 0.08),
        hung="the hook hung after its checkpointer died",
    )
    checks = ["criu killed with -9 during the dump"]
    checks.append("the hook returned (no hang on what criu left behind)")
    if status == 0:
        checks.append("(criu had already finished: the checkpoint completed)")
    else:
        assert status == 80, stderr
        assert "criu failed" in stderr and stderr.count("\n") == 1, stderr
        checks.append("the hook reports the checkpointer's failure (exit 80, one line)")
    assert verify_generation(previous) == before
    checks.append("the previous complete generation is unchanged")
    checks.append(_no_leftovers(site))
    if job.is_running():
        checks.append(_keeps_counting(job, "after the kill"))
        assert call_hook(site.torque_args(job), site.config).returncode == 0
        checks.append("the next checkpoint succeeds")
    else:
        assert "ended during the failed dump" in stderr and "restart the job" in stderr, stderr
        checks.append("(criu died inside the job and took it along: the line says to restart it)")
    checks.append(_all_complete(site, "1002.head"))
    checks.append(_newest_restores(site, job))
    return checks


def hanging_checkpointer(site: Site, rng: random.Random) -> list[str]:
    """criu stopped (SIGSTOP) in the middle of a dump: timeout_s must end it and free the job."""
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("1003.head", app_env={"COUNTER_MIB": "128"})
    assert call_hook(site.torque_args(job), site.config).returncode == 0  # a good one first
    site.configure(timeout_s=2, **{"backends.criu.run_as": "job-user"})
    args = site.torque_args(job, signal_number=15)
    status, stderr, criu = _signal_criu_mid_dump(
        site, args, signal.SIGSTOP, rng.uniform(0, 0.05), hung="timeout_s=2 did not end the hung criu"
    )
    checks = ["criu hung (SIGSTOP) during a SIGNAL 15 dump"]
    if status == 0:
        checks.append("(criu had already finished before it was stopped)")
        job.wait_ended()
        return checks
    assert status == 81 and "timeout_s=2" in stderr, f"{status}: {stderr}"
    checks.append("timeout_s ended it: exit 81, the line says timeout")
    wait_until_gone([criu], timeout=10)
    assert not psutil.pid_exists(criu), "the hung criu is still there"
    checks.append("the checkpointer's process group was killed")
    if job.is_running():
        checks.append(_keeps_counting(job, "after the timeout (SIGNAL 15 not honoured on failure)"))
    else:  # criu was stopped while its parasite ran inside the job (see kill9_checkpointer)
        assert "ended during the failed dump" in stderr, stderr
        checks.append("(criu was stopped inside the job, which died with it: the line says to restart it)")
    checks.append(_no_leftovers(site))
    checks.append(_all_complete(site, "1003.head"))
    checks.append(_newest_restores(site, job))
    return checks


def spool_too_small(site: Site, rng: random.Random) -> list[str]:
    """A 20 MiB tmpfs spool: the second image cannot fit."""
    small = site.base / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m,mode=0711", "tmpfs", str(small)], check=True)
    try:
        (small / "spool").mkdir(mode=0o711)
        site.configure(
            spool_dir=str(small / "spool"), space_margin=0, keep=3, **{"backends.criu.run_as": "job-user"}
        )
        job = site.start_job("1004.head", app_env={"COUNTER_MIB": str(rng.choice((8, 9, 10)))})
        assert call_hook(site.torque_args(job), site.config).returncode == 0
        [first] = sorted((small / "spool").glob("*.1004.head/0*"))
        before = verify_generation(first)
        result = call_hook(site.torque_args(job, signal_number=15), site.config)
        assert result.returncode in (74, 80), result.stderr
        assert "No space left" in result.stderr or "disk full" in result.stderr, result.stderr
        checks = [f"the dump ran out of space: exit {result.returncode}, the line says so"]
        assert sorted((small / "spool").glob("*.1004.head/0*")) == [first]
        assert verify_generation(first) == before
        checks.append("the earlier generation is intact and the only one")
        assert not list((small / "spool").glob("*/.incoming-*")), "half-written image left"
        checks.append("nothing half-written left")
        checks.append(_keeps_counting(job, "after a failed SIGNAL 15 checkpoint"))
        checks.append(_newest_restores(site, job, small / "spool"))
        return checks
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def concurrent_one_job(site: Site, rng: random.Random) -> list[str]:
    """20 simultaneous invocations for one job (psnc stand-in that takes 2 s, so they overlap)."""
    site.configure(backend="psnc", **{"backends.psnc.chkpnt": str(site.standin("chkpnt", STANDIN_HANG="2"))})
    job = site.start_job("1005.head")
    args = site.torque_args(job)
    hooks = [_hook(site, args) for _ in range(20)]
    statuses = sorted(h.wait(timeout=120) for h in hooks)
    assert statuses == [0] + [75] * 19, statuses
    busy = [h.stderr.read().decode() for h in hooks if h.returncode == 75 and h.stderr]
    assert all("another checkpoint of job 1005.head is running (pid" in line for line in busy)
    [generation] = site.generations("1005.head")
    verify_generation(generation)
    return [
        "20 invocations at once: exactly one exit 0, nineteen exit 75 naming the running one",
        "one complete generation, verified",
        _no_leftovers(site),
    ]


def concurrent_many_jobs(site: Site, rng: random.Random) -> list[str]:
    """8 jobs at once with max_concurrent=2 (psnc stand-in that takes 1 s)."""
    site.configure(
        backend="psnc",
        max_concurrent=2,
        **{"backends.psnc.chkpnt": str(site.standin("chkpnt", STANDIN_HANG="1"))},
    )
    jobs = [site.start_job(f"10{60 + i}.head") for i in range(8)]
    hooks = [_hook(site, site.torque_args(job)) for job in jobs]
    assert [h.wait(timeout=120) for h in hooks] == [0] * 8
    starts = {c["ppid"]: c["time"] for c in site.standin_calls()}
    ends = {e["pid"]: _epoch(e["timestamp"]) for e in site.log_events() if e["event"] == "dump.done"}
    intervals = [(starts[pid], ends[pid]) for pid in starts]
    most = max(sum(1 for s, e in intervals if s <= t < e) for t, _ in intervals)
    assert most <= 2, f"{most} checkpointers ran at once"
    return [
        "8 jobs at once: all complete",
        f"at most {most} checkpointers ran at the same time (max_concurrent=2)",
    ]


def checkpoint_dir_deleted(site: Site, rng: random.Random) -> list[str]:
    """A checkpoint fails, pbs_mom deletes CHECKPOINT_DIR, the job crashes: restart finds the newest."""
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("1006.head", app_env={"COUNTER_LIMIT": "400"})
    assert call_hook(site.torque_args(job), site.config).returncode == 0
    checkpointed = job.count()
    site.configure(**{"backends.criu.run_as": "job-user", "backends.criu.binary": "/nonexistent/criu"})
    failed_args = site.torque_args(job)
    assert call_hook(failed_args, site.config).returncode == 69
    shutil.rmtree(str(failed_args[4]))  # what pbs_mom's delete_blcr_checkpoint_files() does
    site.configure(**{"backends.criu.run_as": "job-user"})
    crash(job)
    restart = start_restart(
        [job.session_id, job.job_id, site.user.name, site.user.name, failed_args[4], failed_args[5]],
        site.config,
    )
    try:
        deadline = time.monotonic() + 30
        while job.count() == 0 or job.counts()[-1] <= checkpointed:
            assert time.monotonic() < deadline, "the restarted job does not count"
            assert restart.poll() is None, restart.stderr.read() if restart.stderr else ""
            time.sleep(0.05)
    finally:
        restart.terminate()
        restart.wait(timeout=30)
    return [
        "a checkpoint failed and pbs_mom removed CHECKPOINT_DIR",
        "mom-restart found the newest complete generation without the pointer",
        "the restored job counts on",
    ]


def node_reboot(site: Site, rng: random.Random) -> list[str]:
    """Everything killed mid-checkpoint (the node went down); then a restart and the next checkpoint."""
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("1007.head", app_env={"COUNTER_MIB": "64"})
    args = site.torque_args(job)
    assert call_hook(args, site.config).returncode == 0
    hook = _hook(site, site.torque_args(job))
    _checkpointer_of(hook.pid)
    time.sleep(rng.uniform(0, 0.1))
    victims = [hook.pid, *[c.pid for c in _children(hook.pid)], *[p.pid for p in job.processes(zombies=True)]]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    hook.wait()
    crash(job)
    wait_until_gone(victims)
    checks = ["hook, checkpointer and job all killed mid-checkpoint"]
    restart = start_restart(
        [job.session_id, job.job_id, site.user.name, site.user.name, args[4], args[5]], site.config
    )
    try:
        deadline = time.monotonic() + 30
        while not psutil.Process(restart.pid).children():
            assert time.monotonic() < deadline and restart.poll() is None, "the restart failed"
            time.sleep(0.05)
        checks.append("mom-restart brought the job back from the newest complete generation")
        again = call_hook(site.torque_args(job), site.config)
        assert again.returncode == 0, again.stderr
        checks.append("the next checkpoint (old SESSION_ID) succeeds: no stale lock")
        checks.append(_no_leftovers(site))
        checks.append(_all_complete(site, "1007.head"))
    finally:
        restart.terminate()
        restart.wait(timeout=30)
    return checks


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _epoch(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


FAULTS: dict[str, tuple[Scenario, int]] = {
    # name: (scenario, runs by `make reliability`)
    "kill -9 of the hook at a random moment (real CRIU)": (kill9_hook, 25),
    "kill -9 of criu in the middle of a dump": (kill9_checkpointer, 5),
    "criu hanging (SIGSTOP) past timeout_s": (hanging_checkpointer, 5),
    "spool too small for the image (20 MiB tmpfs)": (spool_too_small, 3),
    "20 simultaneous invocations for one job (psnc stand-in)": (concurrent_one_job, 3),
    "8 jobs at once, max_concurrent=2 (psnc stand-in)": (concurrent_many_jobs, 3),
    "pbs_mom deleted CHECKPOINT_DIR after a failed checkpoint": (checkpoint_dir_deleted, 3),
    "node reboot mid-checkpoint: everything killed, then restart and next checkpoint": (node_reboot, 3),
}

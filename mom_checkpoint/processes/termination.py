"""Ending a job after a complete checkpoint (TORQUE SIGNAL 15, qhold): pbs_mom never does it itself."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

import psutil

from mom_checkpoint.platform.errors import PidInUse
from mom_checkpoint.platform.waiting import poll
from mom_checkpoint.processes.procfs import state


def session_processes(session_id: int, uid: int) -> list[psutil.Process]:
    """The live processes of a session that belong to ``uid`` (never this program itself)."""
    found = []
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.pid == os.getpid() or os.getsid(proc.pid) != session_id:
                continue
            if proc.info["uids"] is not None and proc.info["uids"].real == uid:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def end_session(
    session_id: int,
    uid: int,
    grace_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> list[int]:
    """SIGTERM every process of the job's session, SIGKILL what is left after ``grace_s``."""
    procs = session_processes(session_id, uid)
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    alive = _wait_ended(procs, grace_s, sleep, monotonic)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    _wait_ended(alive, 5, sleep, monotonic)
    return [p.pid for p in procs]


def _wait_ended(
    procs: list[psutil.Process],
    timeout: float,
    sleep: Callable[[float], None],
    monotonic: Callable[[], float],
) -> list[psutil.Process]:
    """Wait until every process has ended; a zombie has ended (its parent, pbs_mom, reaps it)."""
    return poll(lambda: [p for p in procs if _running(p)], lambda alive: not alive, timeout,
                sleep=sleep, monotonic=monotonic)  # fmt: skip


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def alive(pid: int) -> bool:
    return state(pid) not in (None, "Z", "X")


def ended_soon(
    pids: list[int],
    within_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> list[int]:
    """Those of ``pids`` that have ended, or end within ``within_s`` (a process that a dying
    checkpointer was inside dies a moment after the checkpointer: see docs/CRIU.md)."""
    return poll(
        lambda: [pid for pid in pids if not alive(pid)], bool, within_s, sleep=sleep, monotonic=monotonic
    )


def stopped(pids: list[int]) -> set[int]:
    """Those of ``pids`` that are stopped now (job control or ptrace stop)."""
    return {pid for pid in pids if state(pid) in ("T", "t")}


def resume_tree(pids: list[int], *, stopped_before: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """After a failed or killed checkpointer: no process of the job is left stopped by it. Processes
    that were stopped before the checkpoint (a user's qsig -s STOP) stay as they were."""
    resumed = []
    for pid in sorted(stopped(pids) - stopped_before):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)
            resumed.append(pid)
    return resumed


def _signal(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)


def tree_pids(pid: int) -> list[int]:
    """A process and its descendants, parents first (from the kernel's children lists)."""
    from mom_checkpoint.processes.discovery import child_pids

    found, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        found.append(current)
        with contextlib.suppress(FileNotFoundError):
            todo += child_pids(current)
    return found


KILLED_GONE_S = 5.0  # how long kill_tree waits for the killed processes' pids to be free again


def kill_tree(pid: int, gone_within: float = KILLED_GONE_S) -> None:
    """SIGKILL a child of this process and everything below it (the deepest first, so nothing is left
    to be reparented and go on), reap it, and wait (bounded) until the others are reaped too: their
    pids are the job's, and the next restart of the job needs them free."""
    members = []
    for member in reversed(tree_pids(pid)):
        with contextlib.suppress(psutil.Error):
            members.append(psutil.Process(member))
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    with contextlib.suppress(psutil.Error):
        psutil.wait_procs([m for m in members if m.pid != pid], timeout=gone_within)


def wait_pids_free(pids: list[int], wait_s: float, sleep: Callable[[float], object] = time.sleep) -> None:
    """CRIU restores the original PIDs: they must all be free. A PID a zombie holds (the job's own
    application, killed by the qhold a moment ago and not yet reaped: TORQUE's qrls right after a
    qhold restarts within a second) is waited for, at most ``wait_s`` in all; one a live process
    holds, or a zombie still there after that, is named (PidInUse, 82)."""
    deadline = time.monotonic() + wait_s
    for pid in pids:
        while True:
            try:
                proc = psutil.Process(pid)
                zombie = proc.status() == psutil.STATUS_ZOMBIE
                state = ", a zombie not yet reaped" if zombie else ""
                holder = f"{pid} (now {proc.name()}{state}, user {proc.username()})"
            except psutil.NoSuchProcess:
                break
            except psutil.Error:
                zombie, holder = False, str(pid)
            if not zombie or time.monotonic() >= deadline:
                raise PidInUse(holder)
            sleep(0.05)

"""Ending a job after a complete checkpoint (TORQUE SIGNAL 15, qhold): pbs_mom never does it itself."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

import psutil


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
    deadline = monotonic() + timeout
    while True:
        alive = [p for p in procs if _running(p)]
        if not alive or monotonic() >= deadline:
            return alive
        sleep(0.05)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def resume_tree(pids: list[int]) -> None:
    """After a killed checkpointer: make sure no process of the job is left stopped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)


def _signal(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)

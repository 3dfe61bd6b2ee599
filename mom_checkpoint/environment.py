"""All I/O with the world outside the process goes through an ``Environment``, so tests can fake it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

# pbs_mom gives its hooks PATH=/bin:/usr/bin only; children get a PATH that also has the sbin folders.
CHILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POLL_S = 0.5
LEFTOVER_GRACE_S = 2.0  # how long a finished program's leftovers may hold its output pipes


@dataclass(frozen=True)
class Completed:
    """What a child program did."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool


class Runner:
    """Runs a program from an argument list (never a shell) with a hard time limit.

    The child gets its own process group, so on expiry the whole group (the checkpointer and anything it
    started) is killed, never pbs_mom's session or the job.
    """

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        umask: int = 0o077,
        on_start: Callable[[int], None] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Completed:
        started = time.monotonic()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else child_environ(),
            cwd=cwd,
            umask=umask,
            process_group=0,
            close_fds=True,
            pass_fds=tuple(pass_fds),
        )
        timed_out = False
        if on_start is not None:
            try:
                on_start(proc.pid)
            except BaseException:  # never leave the program running with nobody to wait for it
                kill_group(proc.pid)
                left = started + timeout_s - time.monotonic()  # no longer than the run was given
                with contextlib.suppress(subprocess.TimeoutExpired):  # a descendant holds the pipes
                    proc.communicate(timeout=max(0.0, min(10.0, left)))
                proc.wait()
                raise
        deadline = started + timeout_s
        ended_at: float | None = None
        while True:
            try:
                out, err = proc.communicate(timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                elif proc.poll() is None:
                    continue
                elif ended_at is None:
                    ended_at = now  # the program has ended, but something it started holds its pipes
                    continue
                elif now - ended_at < LEFTOVER_GRACE_S:
                    continue
            # past the time limit, or the program's leftovers outlived it (a checkpointer's helper
            # that was killed with it, stuck in ptrace-stop): end the whole group, keep what it said
            kill_group(proc.pid)
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # a descendant left the group and holds the pipes
                proc.kill()
                out, err = b"", b""
                proc.wait()
            break
        return Completed(
            argv=tuple(argv),
            returncode=proc.returncode,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            duration_s=time.monotonic() - started,
            timed_out=timed_out,
        )


def run_detached(work: Callable[[], None]) -> None:
    """Run ``work`` in a child of its own session, and return at once: stdio on /dev/null and every
    other descriptor closed (pbs_mom's pipes and log, the job's files), cwd /, and nothing of it
    returns into the caller (it always ends with _exit). Nobody waits for it: the hook ends a moment
    later and the child is handed to init (waiting for even a child that only forks again and exits,
    the double fork of daemons, cost every call ~5 ms here). A long-lived caller keeps it as a zombie
    until it ends."""
    if os.fork():
        return
    status = 1
    try:
        null = os.open(os.devnull, os.O_RDWR)  # first of all: pbs_mom's pipes are let go at once
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.setsid()
        os.chdir("/")
        os.umask(0o077)
        work()
        status = 0
    finally:
        os._exit(status)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def child_environ() -> dict[str, str]:
    """A clean, predictable environment for checkpointers: nothing of pbs_mom's or the caller's."""
    return {"PATH": CHILD_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


@dataclass
class Environment:
    """Streams, clock, environment variables and the subprocess runner of one invocation."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    runner: Runner = field(default_factory=Runner)
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    detach: Callable[[Callable[[], None]], None] = run_detached  # background work nobody waits for

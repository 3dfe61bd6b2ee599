"""All I/O with the world outside the process goes through an ``Environment``, so tests can fake it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import msgspec
from msgspec import field
from msgspec.structs import replace

from mom_checkpoint.platform.errors import CheckpointerFailed

# pbs_mom gives its hooks PATH=/bin:/usr/bin only; children get a PATH that also has the sbin folders.
CHILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POLL_S = 0.5
LEFTOVER_GRACE_S = 2.0  # how long a finished program's leftovers may hold its output pipes
# A checkpointer in job-control stop (SIGSTOP, SIGTSTP: state "T") for this long in all, however often
# it was continued in between, is killed: in job-user mode its user can stop it, and a stopped
# checkpointer would hold a node slot (and the job frozen) until timeout_s. An honest one never stops.
STOPPED_LIMIT_S = 3.0
# How often a watched program's state is looked at: a random interval in this range, so that a user
# who stops and continues it cannot keep in step with the looks (each look that finds it stopped
# counts the whole interval since the last one: on average, the time it really was stopped).
STOP_LOOK_S = (0.05, 0.1)
STOP_WATCH_MAX = 256  # processes of a watched program looked at, at most (CRIU's dump runs as one)


class Completed(msgspec.Struct, frozen=True):
    """What a child program did."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool
    # killed because it was stopped (state "T") for this long in all: Runner.run's stopped_limit_s
    stopped_s: float | None = None


class CheckpointerStopped(CheckpointerFailed):
    """The checkpointer was kept stopped (SIGSTOP) past STOPPED_LIMIT_S and killed: exit 80, the
    checkpointer's failure (its user stopped it), not the node's time limit (81, TimedOut), which
    would tell the administrator to raise timeout_s."""

    template = (
        "the checkpointer was stopped (SIGSTOP) for {:.1f}s of its run: killed it, the job keeps running"
    )


class Runner:
    """Runs a program from an argument list (never a shell) with a hard time limit.

    The child gets its own process group, so on expiry the whole group (the checkpointer and anything it
    started) is killed, never pbs_mom's session or the job. With ``stopped_limit_s``, the group is
    also killed once the program or a descendant of it has been in job-control stop for that long in
    all (StopWatch), and the result says so (``stopped_s``).
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
        stopped_limit_s: float | None = None,
        new_session: bool = False,
        starting: contextlib.AbstractContextManager[None] | None = None,
    ) -> Completed:
        """``new_session``: the program leads a session of its own (and so its group) instead of a
        group in this session. ``starting``: held while the program is started (e.g. to have it
        born in a job's PID namespace, processes.namespaces)."""
        started = time.monotonic()
        with starting if starting is not None else contextlib.nullcontext():
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env) if env is not None else child_environ(),
                cwd=cwd,
                umask=umask,
                process_group=None if new_session else 0,
                start_new_session=new_session,
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
        watch = StopWatch(proc.pid, stopped_limit_s) if stopped_limit_s is not None else None
        stopped_s: float | None = None
        while True:
            look = watch.next_look_s() if watch is not None else POLL_S
            try:
                out, err = proc.communicate(timeout=max(0.0, min(look, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                elif proc.poll() is None:  # not reaped: its pid is still its own to look at
                    if watch is None or not watch.stopped_too_long(now):
                        continue
                    stopped_s = watch.stopped_s  # stopped by whoever may signal it: end it
                elif ended_at is None:
                    ended_at = now  # the program has ended, but something it started holds its pipes
                    continue
                elif now - ended_at < LEFTOVER_GRACE_S:
                    continue
            # past the time limit, stopped too long, or the program's leftovers outlived it (a
            # checkpointer's helper that was killed with it, stuck in ptrace-stop): end the whole
            # group, keep what it said
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
            stopped_s=stopped_s,
        )


class StoppedFails(Runner):
    """The hook's runner of the checkpointer: a checkpointer kept stopped for ``limit_s`` in all is
    killed (Runner.run's ``stopped_limit_s``) and the call fails with CheckpointerStopped (80).

    In job-user mode the checkpointer runs as the job's user, who may signal it: found through the
    TracerPid of their job, it was SIGSTOPped and held a node slot (and the job frozen) until
    timeout_s, and two such held every slot of the node (issue 25 #4). A checkpointer its user stops
    is that user's failure: it is killed after ``limit_s``, the dump fails as any failed dump does
    (the job's processes resumed), and the slot is free again. Only the checkpointer and its own
    descendants are watched: the job's processes, which CRIU stops while it dumps them, are not
    among them (a tracee is not its tracer's child), and CRIU's ptrace-stop ("t") is not a
    job-control stop. Root's checkpointer (root mode) no user can
    stop; the same rule holds for it. Other programs (the restorer, qstat, qalter) are run as before:
    a restorer its user stops delays only that user's restart, and their callers' own clean-up (a
    restorer's stopped tree) runs on the result they return.

    It wraps the environment's runner (a test's stand-in runner stays in place)."""

    def __init__(self, inner: Runner, limit_s: float = STOPPED_LIMIT_S) -> None:
        self.inner = inner
        self.limit_s = limit_s

    def run(self, argv: Sequence[str], *, timeout_s: float, **options: Any) -> Completed:
        options.setdefault("stopped_limit_s", self.limit_s)
        completed = self.inner.run(argv, timeout_s=timeout_s, **options)
        if completed.stopped_s is not None:
            raise CheckpointerStopped(completed.stopped_s)
        return completed


def stopped_checkpointer_fails(env: Environment, limit_s: float = STOPPED_LIMIT_S) -> Environment:
    """``env`` whose runner kills a checkpointer stopped for ``limit_s`` and fails (StoppedFails)."""
    return replace(env, runner=StoppedFails(env.runner, limit_s))


class StopWatch:
    """How long a running program (and what it started) has spent in job-control stop, in all.

    Its state and its descendants' (``/proc/PID/task/TID/children``, which CRIU itself needs) are
    looked at every STOP_LOOK_S, at random: each look that finds one of them stopped ("T") counts the
    time since the previous look. Stopped time is summed over the whole run, never reset when the
    program is continued, so stopping it for most of the time with short continues in between is
    caught as surely as one long stop. Tracing stop ("t": a process CRIU or a debugger holds) is not
    job-control stop and does not count, nor does any other state (D: CRIU reading a slow file)."""

    def __init__(
        self,
        pid: int,
        limit_s: float,
        *,
        states: Callable[[int], list[str]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pid = pid
        self.limit_s = limit_s
        self.stopped_s = 0.0
        self._states = states or tree_states
        self._last = monotonic()

    def next_look_s(self) -> float:
        low, high = STOP_LOOK_S
        return low + (high - low) * int.from_bytes(os.urandom(2)) / 0xFFFF

    def stopped_too_long(self, now: float) -> bool:
        """Look once (at ``now``): whether the program has now been stopped for ``limit_s`` in all."""
        if "T" in self._states(self.pid):
            self.stopped_s += max(0.0, now - self._last)
        self._last = now
        return self.stopped_s >= self.limit_s


def tree_states(pid: int) -> list[str]:
    """The state letters (/proc/PID/stat) of ``pid`` and its living descendants, at most
    STOP_WATCH_MAX processes; a process that ended meanwhile is left out."""
    found: list[str] = []
    seen = {pid}
    todo = [pid]
    while todo and len(found) < STOP_WATCH_MAX:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/stat", "rb") as stat:
                found.append(stat.read().rpartition(b")")[2].split(maxsplit=1)[0].decode())
            for tid in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{tid}/children", "rb") as children:
                    for child in children.read().split():
                        if int(child) not in seen:
                            seen.add(int(child))
                            todo.append(int(child))
        except (OSError, ValueError, IndexError):  # ended meanwhile, or no children files (old kernels)
            continue
    return found


def run_detached(work: Callable[[], None]) -> None:
    """Run ``work`` in a child of its own session, and return at once: stdio on /dev/null and every
    other descriptor closed (pbs_mom's pipes and log, the job's files), cwd /, and nothing of it
    returns into the caller (it always ends with _exit). Nobody waits for it: the hook ends a moment
    later and the child is handed to init (waiting even for a child that only forks again and exits,
    the double fork of daemons, would add to every call). A long-lived caller keeps it as a zombie
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


class Environment(msgspec.Struct):
    """What a command takes from the world, for tests to fake: its streams, environment variables,
    clocks, sleep, the runner of the checkpointer and the batch system's clients, and detached work.

    It is not all I/O: below the commands, modules use the file system, /proc, the effective uid and
    the wall clock of lock and vault holders directly, where a fake would test nothing the real
    thing does not (tests run as root with real files), and a restore starts its restorer itself
    (backends.base keeps that child's handle, which the runner's interface has no place for)."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    runner: Runner = field(default_factory=Runner)
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    detach: Callable[[Callable[[], None]], None] = run_detached  # background work nobody waits for


def last_line(text: str) -> str:
    """A program's last non-blank line of output: the one that says why it failed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""

"""The signals pbs_mom sends the restart (its task), passed on to the restored job."""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType
from typing import Any

import psutil

from mom_checkpoint.processes.termination import tree_pids

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)
ENDING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # before the restored job runs: it never will


class Forwarder:
    """Pass the signals pbs_mom (or a user) sends to this process on to the restored application.

    A signal that ends the job (SIGTERM, SIGINT, SIGHUP: qdel) goes to every process of the restored
    tree, and whatever of it is still there ``grace_s`` later is killed (SIGKILL), the whole tree:
    pbs_mom's own SIGKILL does not reach it (it skips root's processes, this one among them, and
    the restored processes may sit in their own old session), so a task that ignores SIGTERM would
    otherwise outlive qdel (issue 26 #3)."""

    def __init__(self, grace_s: float = 10.0) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        self.saved: dict[int, Any] = {}
        self.ending: int | None = None  # a signal that ends the job, received before it ran
        self.grace_s = grace_s
        self.doomed: list[psutil.Process] = []  # the tree when an ending signal came, to kill after grace

    def __enter__(self) -> Forwarder:
        for sig in FORWARDED:
            self.saved[sig] = signal.signal(sig, self._handle)
        self.saved[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._grace_over)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.pid is None:
            self.pending.append(signum)
            if signum in ENDING and self.ending is None:
                self.ending = signum
            return
        if signum in ENDING:
            self._end(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def _end(self, signum: int) -> None:
        """The signal to every process of the tree; SIGKILL to what is left of it after grace_s."""
        assert self.pid is not None
        members = []
        for pid in tree_pids(self.pid):
            with contextlib.suppress(psutil.Error):
                members.append(psutil.Process(pid))  # its identity (start time) kept with it
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.send_signal(signum)
        if not self.doomed:
            self.doomed = members
            signal.setitimer(signal.ITIMER_REAL, max(0.001, self.grace_s))
        else:
            self.doomed += [m for m in members if m.pid not in {d.pid for d in self.doomed}]

    def _grace_over(self, _signum: int, _frame: FrameType | None) -> None:
        for member in reversed(self.doomed):  # the deepest first: nothing left to go on
            with contextlib.suppress(psutil.Error):
                member.kill()  # only the very process seen then, never a pid reused since

    def wait(self, pid: int) -> int:
        self.pid = pid
        for signum in self.pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        _, status = os.waitpid(pid, 0)
        if self.doomed:  # ended by qdel: what of the tree outlived its root goes too, after the grace
            alive = [m for m in self.doomed if m.pid != pid]
            with contextlib.suppress(psutil.Error):
                _, alive = psutil.wait_procs(alive, timeout=max(0.0, signal.getitimer(signal.ITIMER_REAL)[0]))
            signal.setitimer(signal.ITIMER_REAL, 0)
            for member in reversed(alive):
                with contextlib.suppress(psutil.Error):
                    member.kill()
        return os.waitstatus_to_exitcode(status)  # -N when signal N ended it

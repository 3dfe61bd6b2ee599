"""locking: a busy call names the run that holds the job's lock, even one that took it a moment ago."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from mom_checkpoint.platform.errors import Busy
from mom_checkpoint.spool import locking
from mom_checkpoint.spool.locking import describe_holder, job_lock, job_lock_path


class Clock:
    """locking's clock, faked: a sleep advances it at once, and runs ``meanwhile`` (what another
    process does in that moment) the first time."""

    def __init__(self, meanwhile: Callable[[], object] | None = None) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.meanwhile = meanwhile

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()


def fake_clock(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    monkeypatch.setattr(
        locking, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep, time=time.time)
    )


def test_a_holder_that_has_just_taken_the_lock_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty calls started together: the winner writes who it is a moment after it took the lock; a
    loser that asks in between waits for that (briefly) instead of saying 'holder unknown'."""
    path = job_lock_path(tmp_path, "42.head")
    holder = path.with_name(path.name + ".holder")
    # the winner writes its holder file while the loser waits: not before its first look
    clock = Clock(meanwhile=lambda: holder.write_text('{"pid": 4711, "host": "n1", "since": 0}'))
    fake_clock(monkeypatch, clock)
    assert describe_holder(path).startswith("pid 4711 on n1")
    assert len(clock.slept) == 1, "the holder was named without waiting for its file, or after more waits"
    holder.unlink()
    clock = Clock()
    fake_clock(monkeypatch, clock)
    assert describe_holder(path, wait_s=0.05) == "holder unknown"  # and never waits long
    # it waited for the holder's file until wait_s was up, and not one look longer
    assert sum(clock.slept) >= 0.05 and sum(clock.slept[:-1]) < 0.05, clock.slept


def test_the_busy_message_names_the_holder(tmp_path: Path) -> None:
    argv = ["mom-checkpoint", "1", "42.head"]
    with (
        job_lock(tmp_path, "42.head", argv),
        pytest.raises(Busy, match=r"another checkpoint of job 42\.head is running \(pid "),
        job_lock(tmp_path, "42.head", argv),
    ):
        pass


def test_a_restart_waits_for_the_checkpoint_that_ends_its_job(tmp_path: Path) -> None:
    """Issue 28: mom-restart ends the job's namespace only once no checkpoint of the job runs (a dump
    with SIGNAL 15 runs its CRIU inside the namespace and ends the job itself): checkpoint_finished
    waits for the job's lock, bounded, and never keeps it."""
    import subprocess
    import sys
    import threading

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(job_lock_path(tmp_path, "torque.1001.42.head"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None and holder.stdout.readline() == "held\n"
    assert not locking.checkpoint_finished(tmp_path, "torque.1001.42.head", timeout_s=0)
    answers: list[bool] = []
    waiting = threading.Thread(
        target=lambda: answers.append(locking.checkpoint_finished(tmp_path, "torque.1001.42.head", 60))
    )
    waiting.start()
    waiting.join(timeout=0.3)
    assert waiting.is_alive() and not answers, "it did not wait for the checkpoint"
    holder.stdin.write("done\n")
    holder.stdin.flush()
    waiting.join(timeout=60)
    assert answers == [True] and holder.wait(timeout=10) == 0
    with job_lock(tmp_path, "torque.1001.42.head", ["next"]):  # and it let the lock go
        pass


HOLD_THE_LOCK = """
import sys, filelock
lock = filelock.FileLock(sys.argv[1], timeout=0)
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
"""

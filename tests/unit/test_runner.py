"""The runner of checkpointers, and what happens to the job after a checkpointer failed.

A checkpointer killed in the middle of a dump can leave a helper behind that holds its output pipes
(seen with criu: a forked helper stuck in ptrace-stop), and can leave the job's processes stopped.
Neither may hold pbs_mom or the job."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from mom_checkpoint.environment import Runner
from mom_checkpoint.termination import ended_soon, resume_tree, stopped


def test_a_finished_programs_leftovers_do_not_hold_the_runner() -> None:
    # exits 3 at once, but its child keeps stdout and stderr open for a minute
    completed = Runner().run(["/bin/sh", "-c", "sleep 60 & echo $!; exit 3"], timeout_s=600)
    assert (completed.returncode, completed.timed_out) == (3, False)
    assert completed.duration_s < 60, "the runner waited for the leftover instead of ending it"
    leftover = int(completed.stdout)
    deadline = time.monotonic() + 10
    while _alive(leftover):
        assert time.monotonic() < deadline, "the leftover was not killed with its group"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_program_past_its_time_is_killed_with_its_group() -> None:
    completed = Runner().run(["/bin/sh", "-c", "sleep 60 & sleep 60"], timeout_s=1)
    assert completed.timed_out and completed.returncode == -signal.SIGKILL


def test_a_failing_start_callback_ends_the_program_and_its_group() -> None:
    """on_start runs while the program runs (the hook imports its post-dump modules there): if it
    raises, the program and what it started are ended before the error goes on, never left behind."""
    seen: list[int] = []

    def broken(pid: int) -> None:
        seen.append(pid)
        raise ImportError("a broken install")

    started = time.monotonic()
    with pytest.raises(ImportError, match="a broken install"):
        Runner().run(["/bin/sh", "-c", "sleep 60 & sleep 60"], timeout_s=600, on_start=broken)
    assert time.monotonic() - started < 30
    [pid] = seen
    assert not _alive(pid)
    deadline = time.monotonic() + 10  # its process group goes too: the background sleep (killed,
    while True:  # then reaped by whoever inherits it)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the program's group outlived the failed start"
        time.sleep(0.05)


@pytest.fixture
def sleeper() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_resume_only_what_the_checkpointer_left_stopped(sleeper: int) -> None:
    assert stopped([sleeper]) == set()
    os.kill(sleeper, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while sleeper not in stopped([sleeper]):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert resume_tree([sleeper], stopped_before={sleeper}) == [], "a user's stop must be kept"
    assert sleeper in stopped([sleeper])
    assert resume_tree([sleeper]) == [sleeper]
    deadline = time.monotonic() + 10
    while sleeper in stopped([sleeper]):
        assert time.monotonic() < deadline, "SIGCONT did not resume it"
        time.sleep(0.01)


def test_a_process_that_dies_a_moment_after_the_failure_is_counted_as_lost() -> None:
    dying = subprocess.Popen(["sleep", "0.3"])
    living = subprocess.Popen(["sleep", "60"])
    try:
        assert ended_soon([dying.pid, living.pid], 0.01) == []  # not yet
        dying_gone = ended_soon([dying.pid, living.pid], 10)  # (a zombie counts as ended)
        assert dying_gone == [dying.pid]
        assert ended_soon([living.pid], 0.2) == []
    finally:
        living.kill()
        for proc in (dying, living):
            proc.wait()

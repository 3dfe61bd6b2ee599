"""The runner of checkpointers, and what happens to the job after a checkpointer failed.

A checkpointer killed in the middle of a dump can leave a helper behind that holds its output pipes
(seen with criu: a forked helper stuck in ptrace-stop), and can leave the job's processes stopped.
Neither may hold pbs_mom or the job."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mom_checkpoint.platform.environment import Runner, run_detached
from mom_checkpoint.processes.termination import ended_soon, resume_tree, stopped
from tests.helpers import is_running


def test_a_finished_programs_leftovers_do_not_hold_the_runner(tmp_path: Path) -> None:
    # exits 3 at once, but its child keeps stdout and stderr open for a minute, and notes its own end
    ended = tmp_path / "leftover-ended"
    script = f"(sleep 60; touch {ended}) & echo $!; exit 3"
    completed = Runner().run(["/bin/sh", "-c", script], timeout_s=600)
    assert (completed.returncode, completed.timed_out) == (3, False)
    assert not ended.exists(), "the runner waited for the leftover instead of ending it"
    leftover = int(completed.stdout)
    deadline = time.monotonic() + 10
    while is_running(leftover):
        assert time.monotonic() < deadline, "the leftover was not killed with its group"
        time.sleep(0.05)


def test_a_program_past_its_time_is_killed_with_its_group() -> None:
    completed = Runner().run(["/bin/sh", "-c", "sleep 60 & sleep 60"], timeout_s=1)
    assert completed.timed_out and completed.returncode == -signal.SIGKILL


def test_a_failing_start_callback_ends_the_program_and_its_group(tmp_path: Path) -> None:
    """on_start runs while the program runs (the hook imports its post-dump modules there): if it
    raises, the program and what it started are ended before the error goes on, never left behind."""
    seen: list[int] = []
    ended = tmp_path / "program-ended"

    def broken(pid: int) -> None:
        seen.append(pid)
        raise ImportError("a broken install")

    with pytest.raises(ImportError, match="a broken install"):
        script = f"sleep 60 & sleep 60; touch {ended}"  # notes its own end, after a minute
        Runner().run(["/bin/sh", "-c", script], timeout_s=600, on_start=broken)
    assert not ended.exists(), "the runner waited for the program instead of ending it"
    [pid] = seen
    assert not is_running(pid)
    deadline = time.monotonic() + 10  # its process group goes too: the background sleep
    while _group_members(pid):
        assert time.monotonic() < deadline, "the program's group outlived the failed start"
        time.sleep(0.05)


def test_after_a_failing_start_callback_the_wait_for_the_pipes_stays_within_the_time_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A descendant that left the group (its own session) keeps the pipes open for a minute: the
    runner stops waiting for them when the run's time is up, not 10 s later."""
    record = tmp_path / "descendant"

    def broken(pid: int) -> None:
        deadline = time.monotonic() + 10
        while not record.exists() or not record.read_text().strip():  # it has left the group
            assert time.monotonic() < deadline
            time.sleep(0.01)
        raise ImportError("a broken install")

    waits: list[float | None] = []  # the time each wait for the program's pipes was given
    real_communicate = subprocess.Popen.communicate

    def communicate(
        self: subprocess.Popen[bytes], input: bytes | None = None, timeout: float | None = None
    ) -> tuple[Any, Any]:
        waits.append(timeout)
        return real_communicate(self, input, timeout)

    monkeypatch.setattr(subprocess.Popen, "communicate", communicate)
    try:
        with pytest.raises(ImportError):
            script = f"setsid sleep 60 & echo $! > {record}; sleep 60"
            Runner().run(["/bin/sh", "-c", script], timeout_s=2, on_start=broken)
        assert waits and all(w is not None and w <= 2 for w in waits), f"waited for the pipes: {waits}"
    finally:
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(record.read_text()), signal.SIGKILL)


def _group_members(pgid: int) -> list[int]:
    """The live processes of a process group (a killed one may stay a zombie until its adopter reaps
    it: that is not alive)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


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
    dying = subprocess.Popen(["sleep", "60"])
    living = subprocess.Popen(["sleep", "60"])

    def dies_meanwhile(seconds: float) -> None:
        os.kill(dying.pid, signal.SIGKILL)  # not reaped: a zombie until the test's wait()
        time.sleep(seconds)

    try:
        assert ended_soon([dying.pid, living.pid], 0.01) == []  # not yet
        # it dies while ended_soon waits (a zombie counts as ended)
        dying_gone = ended_soon([dying.pid, living.pid], 10, sleep=dies_meanwhile)
        assert dying_gone == [dying.pid]
        assert ended_soon([living.pid], 0.2) == []
    finally:
        living.kill()
        for proc in (dying, living):
            proc.wait()


def test_detached_work_runs_in_its_own_session_on_dev_null_and_nobody_waits(tmp_path: Path) -> None:
    """run_detached: the caller returns at once (pbs_mom waits for the hook); the work runs in a session
    of its own, with stdio on /dev/null, no other descriptor of the caller's (pbs_mom's pipes, the
    job's files) and cwd /."""
    report = tmp_path / "report.json"
    returned = tmp_path / "returned"  # the caller has returned: the work waits for it (at most 30 s)
    held = os.open(tmp_path, os.O_RDONLY)  # a descriptor of the caller's, which the work must not have

    def work() -> None:
        deadline = time.monotonic() + 30
        while not returned.exists() and time.monotonic() < deadline:  # until the caller has returned
            time.sleep(0.01)
        fds = {
            name: os.readlink(f"/proc/self/fd/{name}")
            for name in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{name}")
        }
        seen = {
            "pid": os.getpid(),
            "sid": os.getsid(0),
            "fds": fds,
            "cwd": os.getcwd(),
            "after_the_caller": returned.exists(),
        }
        report.write_text(json.dumps(seen))

    try:
        run_detached(work)
        returned.touch()
    finally:
        os.close(held)
    deadline = time.monotonic() + 20
    while not report.exists() or not report.read_text():
        assert time.monotonic() < deadline, "the detached work did not run"
        time.sleep(0.05)
    seen = json.loads(report.read_text())
    assert seen["after_the_caller"], "the caller waited for the detached work"
    assert seen["sid"] == seen["pid"] != os.getsid(0)
    assert seen["cwd"] == "/"
    assert [seen["fds"][str(fd)] for fd in (0, 1, 2)] == ["/dev/null"] * 3
    others = {fd: target for fd, target in seen["fds"].items() if int(fd) > 2}
    assert str(tmp_path) not in others.values(), others  # only what the work opened itself (listdir's)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(seen["pid"], 0)  # this test process is the long-lived caller: reap its child

"""A checkpointer kept stopped is killed, not waited for until timeout_s (issue 25 #4).

In job-user mode the checkpointer runs as the job's user, who can SIGSTOP it: it held a node slot
(and the job frozen) until timeout_s. The runner now watches the program's own process group for
job-control stop ("T"), counts the stopped time over the whole run, and kills the group once it
passes the bound; the hook's wrapper turns that into one line and exit 80.

The runs are given timeout_s = 60: that the watch ended a run is told by what it returns (stopped_s
set, not timed_out), never by how long it took; without the watch they run into that timeout (or
never end stopped).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from mom_checkpoint.platform.environment import (
    CheckpointerStopped,
    Completed,
    Environment,
    Runner,
    StoppedFails,
    StopWatch,
    stopped_checkpointer_fails,
    tree_states,
)
from mom_checkpoint.platform.errors import CheckpointerFailed
from mom_checkpoint.platform.status import ExitStatus

TIMEOUT_S = 60.0  # what the runs are given: the watch must end them long before


def test_a_program_that_stops_itself_is_killed_long_before_its_timeout() -> None:
    completed = Runner().run(
        ["/bin/sh", "-c", "kill -STOP $$; echo continued"], timeout_s=TIMEOUT_S, stopped_limit_s=0.5
    )
    assert completed.stopped_s is not None and completed.stopped_s >= 0.5, completed
    assert not completed.timed_out and completed.returncode == -signal.SIGKILL
    assert "continued" not in completed.stdout


def test_a_stop_continued_again_and_again_is_counted_in_all() -> None:
    """The user stops it for 0.3 s, lets it run 0.1 s, stops it again: no single stop reaches the
    1 s bound, their sum does."""
    done = threading.Event()

    def toggle(pid: int) -> None:
        def run() -> None:
            while not done.is_set():
                _signal(pid, signal.SIGSTOP)
                if done.wait(0.3):
                    break
                _signal(pid, signal.SIGCONT)
                done.wait(0.1)

        threading.Thread(target=run, daemon=True).start()

    try:
        completed = Runner().run(
            ["/bin/sleep", "60"], timeout_s=TIMEOUT_S, on_start=toggle, stopped_limit_s=1.0
        )
    finally:
        done.set()
    assert completed.stopped_s is not None and completed.stopped_s >= 1.0, completed
    assert not completed.timed_out and completed.returncode == -signal.SIGKILL, completed


def test_a_stopped_descendant_counts_too() -> None:
    """The program waits for a child of its that is stopped: the group is killed all the same."""
    script = "sleep 60 & kill -STOP $!; wait"
    completed = Runner().run(["/bin/sh", "-c", script], timeout_s=TIMEOUT_S, stopped_limit_s=0.5)
    assert completed.stopped_s is not None and completed.stopped_s >= 0.5, completed
    assert not completed.timed_out and completed.returncode == -signal.SIGKILL, completed


def test_stopping_a_process_outside_its_group_is_not_its_stop() -> None:
    """CRIU stops the job's processes (they are not in its group) while it dumps them: that never
    counts against it."""
    other = subprocess.Popen(["/bin/sleep", "60"], start_new_session=True)
    try:
        script = f"kill -STOP {other.pid}; sleep 1.5; kill -CONT {other.pid}; echo done"
        completed = Runner().run(["/bin/sh", "-c", script], timeout_s=TIMEOUT_S, stopped_limit_s=0.3)
    finally:
        other.kill()
        other.wait()
    assert (completed.returncode, completed.stopped_s, completed.stdout) == (0, None, "done\n"), completed


def test_without_a_limit_a_stopped_program_runs_into_its_timeout_as_before() -> None:
    completed = Runner().run(["/bin/sh", "-c", "kill -STOP $$"], timeout_s=1)
    assert completed.timed_out and completed.stopped_s is None


def test_only_job_control_stop_counts_and_the_count_never_resets() -> None:
    """'t' is tracing stop (a process held by CRIU or a debugger), not a stop its user made; each look
    that finds 'T' adds the time since the previous look, whatever came in between."""
    now = [0.0]
    states = iter([["S"], ["t", "S"], ["T"], ["R"], ["S", "T"], ["D"], ["T"]])
    watch = StopWatch(1, 2.5, states=lambda pid: next(states), monotonic=lambda: now[0])
    seen = []
    for _ in range(7):
        now[0] += 1.0
        seen.append((watch.stopped_too_long(now[0]), watch.stopped_s))
    assert seen == [
        (False, 0.0),
        (False, 0.0),
        (False, 1.0),
        (False, 1.0),
        (False, 2.0),
        (False, 2.0),
        (True, 3.0),
    ]


def test_the_looks_come_at_random_intervals_in_their_range() -> None:
    watch = StopWatch(1, 1.0, states=lambda pid: [])
    looks = {watch.next_look_s() for _ in range(50)}
    assert all(0.05 <= look <= 0.1 for look in looks) and len(looks) > 10


def test_tree_states_reads_the_program_and_its_descendants() -> None:
    parent = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 60 & kill -STOP $!; echo ready; wait"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 10  # a stop takes effect once the child is scheduled
        while (states := tree_states(parent.pid)) != ["S", "T"]:
            assert time.monotonic() < deadline, states  # the shell waiting, its child stopped
            time.sleep(0.01)
    finally:
        _signal(-parent.pid, signal.SIGKILL)
        parent.wait()
    assert tree_states(2**22 + 7) == []  # no such process


class _Fake(Runner):
    """A stand-in runner: records what it was asked, returns what it is told."""

    def __init__(self, result: Completed) -> None:
        self.result = result
        self.asked: list[dict[str, Any]] = []

    def run(self, argv: Sequence[str], **kwargs: Any) -> Completed:
        self.asked.append(kwargs)
        return self.result


def _completed(stopped_s: float | None) -> Completed:
    returncode = -signal.SIGKILL if stopped_s is not None else 0
    return Completed(("criu", "dump"), returncode, "", "", 3.2, False, stopped_s)


def test_the_hooks_runner_fails_a_stopped_checkpointer_with_one_line_and_80() -> None:
    fake = _Fake(_completed(3.04))
    env = stopped_checkpointer_fails(Environment(runner=fake))
    assert isinstance(env.runner, StoppedFails) and env.runner.inner is fake
    with pytest.raises(CheckpointerStopped) as raised:
        env.runner.run(["criu", "dump"], timeout_s=600)
    assert fake.asked[0]["stopped_limit_s"] == 3.0
    assert isinstance(raised.value, CheckpointerFailed)
    assert raised.value.exit_status == ExitStatus.CHECKPOINTER_FAILED and int(raised.value.exit_status) == 80
    assert str(raised.value) == (
        "the checkpointer was stopped (SIGSTOP) for 3.0s of its run: killed it, the job keeps running"
    )


def test_the_hooks_runner_passes_a_normal_run_through() -> None:
    fake = _Fake(_completed(None))
    assert (
        stopped_checkpointer_fails(Environment(runner=fake)).runner.run(["criu"], timeout_s=1) is fake.result
    )


def test_the_hooks_runner_on_a_real_stopped_program() -> None:
    runner = StoppedFails(Runner(), limit_s=0.5)
    with pytest.raises(CheckpointerStopped, match=r"stopped \(SIGSTOP\) for 0\.\ds"):
        runner.run(["/bin/sh", "-c", "kill -STOP $$"], timeout_s=TIMEOUT_S)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        if pid < 0:
            os.killpg(-pid, signum)
        else:
            os.kill(pid, signum)

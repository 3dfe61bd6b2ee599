"""Issue 26 #2: TORQUE's qrls right after a qhold restarts while the killed application's zombie still
holds its PID; the restore waits, bounded, for the job's own dead processes to be reaped, and names a
PID a live process (or a zombie that stays) holds."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from mom_checkpoint.platform.errors import PidInUse
from mom_checkpoint.processes.termination import wait_pids_free


def zombie() -> int:
    """A child that has exited and is not reaped yet."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    while True:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rpartition(")")[2].split()[0] == "Z":
                return pid
        time.sleep(0.01)


def test_a_zombie_reaped_meanwhile_is_waited_for() -> None:
    pid = zombie()
    reaper = threading.Timer(0.3, os.waitpid, (pid, 0))
    reaper.start()
    try:
        wait_pids_free([pid], wait_s=10)  # returns once it is reaped
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        reaper.join()


def test_a_zombie_that_stays_is_named_after_the_wait() -> None:
    pid = zombie()
    try:
        with pytest.raises(PidInUse, match=f"{pid} .*a zombie not yet reaped"):
            wait_pids_free([pid], wait_s=0.2)
    finally:
        os.waitpid(pid, 0)


def test_a_live_process_is_named_at_once() -> None:
    live = subprocess.Popen(["sleep", "30"])
    slept: list[float] = []
    try:
        with pytest.raises(PidInUse, match=str(live.pid)):
            wait_pids_free([live.pid], wait_s=30, sleep=slept.append)
        assert slept == []  # a live holder is not waited for
    finally:
        live.kill()
        live.wait()

"""processes.namespaces: the holder of a restored job's namespaces, and root entering only its own."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

from mom_checkpoint.platform.errors import Refused
from mom_checkpoint.processes import discovery, namespaces
from mom_checkpoint.processes.namespaces import Holder, Namespaces

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces are made and entered by root")


def test_the_holder_is_pid_1_of_a_namespace_with_its_own_proc_and_ends_it() -> None:
    holder = Holder()
    try:
        with holder.spawning():
            child = subprocess.Popen(["sleep", "60"])
        inside = namespaces.of(child.pid)
        assert namespaces.inside(holder.pid).pid == 1 and namespaces.inside(child.pid).pid == 2
        assert inside.pid != namespaces.own().pid and inside.mnt == namespaces.own().mnt  # mounts: CRIU's
        assert namespaces.of(holder.pid).mnt != namespaces.own().mnt
        # the holder's mount namespace has that PID namespace's /proc: its PID 1 is the holder
        fd = holder.open("/proc/1/stat", os.O_RDONLY)
        try:
            assert os.read(fd, 100).split()[0] == b"1"
            assert os.fstat(fd).st_dev != os.stat("/proc/1/stat").st_dev
        finally:
            os.close(fd)
        os.kill(holder.pid, signal.SIGTERM)  # pbs_mom's SIGTERM reaches it: it is not the job's end
        time.sleep(0.2)
        assert psutil.Process(holder.pid).status() != psutil.STATUS_ZOMBIE
        assert child.poll() is None
    finally:
        holder.close()
    assert child.wait(timeout=10) == -signal.SIGKILL, "what was left inside outlived the namespace"
    assert holder.reaped(timeout_s=10), "the holder outlived its pipe"


def test_root_enters_only_the_namespaces_it_recorded() -> None:
    holder = Holder()
    try:
        with holder.spawning():
            child = subprocess.Popen(["sleep", "60"])
        made = namespaces.of(child.pid)
        with namespaces.entered(child.pid, made) as (pid_fd, mnt_fd):
            assert (os.fstat(pid_fd).st_ino, os.fstat(mnt_fd).st_ino) == (made.pid, made.mnt)
        wrong = Namespaces(made.pid, made.mnt + 1)
        with (
            pytest.raises(Refused, match="not the ones its restart made"),
            namespaces.entered(child.pid, wrong),
        ):
            pass
        # the hook: a job in namespaces no restart recorded is refused; the recorded ones are taken
        records = [discovery._record(psutil.Process(child.pid))]
        assert discovery._namespaces_of(records, made, "1.head") == made
        for recorded in (None, Namespaces(made.pid + 1, made.mnt)):
            with pytest.raises(Refused, match="no restart of it made"):
                discovery._namespaces_of(records, recorded, "1.head")
        ours = [discovery._record(psutil.Process(os.getpid()))]
        assert discovery._namespaces_of(ours, None, "1.head") is None
        # a child started inside children_in() is born in the job's PID namespace
        with namespaces.entered(child.pid, made) as (pid_fd, _), namespaces.children_in(pid_fd):
            joined = subprocess.Popen(["sleep", "60"])
        assert namespaces.of(joined.pid).pid == made.pid and namespaces.inside(joined.pid).pid > 2
        joined.kill()
        joined.wait()
        after = subprocess.Popen(["sleep", "60"])  # alive while it is looked at: a zombie has no ns
        assert namespaces.of(after.pid).pid == namespaces.own().pid, "this process stayed inside"
        after.kill()
        after.wait()
    finally:
        holder.close()
    child.wait(timeout=10)
    assert holder.reaped(timeout_s=10)


def test_inside_reads_the_innermost_pid_and_session() -> None:
    me = namespaces.inside(os.getpid())
    assert (me.pid, me.session) == (os.getpid(), os.getsid(0))

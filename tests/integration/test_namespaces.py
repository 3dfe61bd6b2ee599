"""Restart anywhere (issue 28): every CRIU restore in a PID namespace of the job's own, on real CRIU.

The job gets back the PIDs its image has whatever holds them on the node; it is checkpointed again from
inside its namespace and restored into a fresh one, any number of times; pbs_mom's view does not change
(mom-restart is the task; its session's SIGKILL leaves nothing of the job).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.helpers import (
    APPS,
    Site,
    call_hook,
    inside_pid,
    installed,
    is_running,
    qhold_and_lose,
    restart_args,
    restored_by,
    start_restart,
    verify_generation,
    wait_not_running,
    wait_restored_as,
    without_namespaces,
)

pytestmark = pytest.mark.usefixtures("criu")


@contextlib.contextmanager
def squatters(pids: list[int], uid: int) -> Iterator[list[int]]:
    """Processes of another user at exactly these PIDs (root sets the kernel's last pid below each,
    then the child becomes that user): what a user who wants a job's restore to fail would do."""
    taken = []
    try:
        for pid in pids:
            for _ in range(50):
                with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
                    fh.write(str(pid - 1))
                child = os.fork()
                if child == 0:  # pragma: no cover - the squatter
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)
                    os.execv("/bin/sleep", ["sleep", "600"])
                if child == pid:
                    taken.append(child)
                    break
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
            else:
                pytest.fail(f"could not take pid {pid}: the machine is too busy")
        deadline = time.monotonic() + 10
        while any(psutil.Process(p).uids().real != uid for p in taken):
            assert time.monotonic() < deadline, "the squatters did not become their user"
            time.sleep(0.01)
        yield taken
    finally:
        for child in taken:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)


def test_a_restore_gets_every_pid_back_while_another_user_holds_them_all(user_mode: Site) -> None:
    """PID squatting (docs/SECURITY.md): every PID of the job is held by another user's processes when
    pbs_mom restarts it; the job comes back with all of them, in its own namespace, and counts on."""
    site = user_mode
    job = site.start_job("801.head", app_env={"COUNTER_LIMIT": "80", "COUNTER_EXIT": "5"})
    pids = [job.exec_pid(), job.app_pid()]
    job.wait_count(5)
    args, _ = qhold_and_lose(site, job)
    nobody = pwd.getpwnam("nobody").pw_uid
    with squatters(pids, nobody) as taken:
        restart = start_restart(restart_args(job, args), site.config)
        found = wait_restored_as(restart, pids)
        assert all(psutil.Process(pid).uids().real == nobody for pid in taken), "a squatter was touched"
        assert [found[pid] for pid in pids] != pids, "the job runs beside the squatters, not on their pids"
        counted = job.count()
        assert job.wait_count(counted + 3) > counted, "the restored job does not count on"
        assert restart.wait(timeout=90) == 5, restart.stderr.read() if restart.stderr else ""
    assert job.counts()[-1] == 80
    [made] = [e for e in site.log_events() if e["event"] == "restart.namespace"]
    assert made["pid_ns"] != os.stat("/proc/self/ns/pid").st_ino


def test_three_rounds_of_checkpoint_and_restore_each_in_a_fresh_namespace(user_mode: Site) -> None:
    """A restored job is an ordinary job: the hook finds it through its restart, dumps it from inside
    its namespace by the PIDs it sees, and the next restore puts it into a new namespace with them."""
    site = user_mode
    job = site.start_job("802.head", app_env={"COUNTER_LIMIT": "400", "COUNTER_EXIT": "9"})
    pids = [job.exec_pid(), job.app_pid()]
    job.wait_count(3)
    args, _ = qhold_and_lose(site, job)
    namespaces = set()
    restart = None
    for _round in range(3):
        restart = start_restart(restart_args(job, args), site.config)
        found = wait_restored_as(restart, pids)
        namespaces.add(os.stat(f"/proc/{found[pids[0]]}/ns/pid").st_ino)
        counted = job.count()
        assert job.wait_count(counted + 3) > counted, "the restored job does not count on"
        # pbs_mom still passes the first run's dead session id; SIGNAL 15 (qhold) again, and the
        # next qrls names this checkpoint
        args = site.torque_args(job, signal_number=15)
        held = call_hook(args, site.config)
        assert held.returncode == 0, held.stderr
        manifest = verify_generation(site.generations("802.head")[-1])
        assert manifest["job"]["found_via"] == "restart-record"
        assert [p["pid"] for p in manifest["processes"]] == pids, "not the PIDs the job sees"
        assert manifest["job"]["exec_pid"] == pids[0]
        restart.wait(timeout=30)  # CRIU ended the dumped tree: the restart process ends with it
        assert not restored_by(restart.pid)
    assert len(namespaces) == 3, "each restore must make a namespace of its own"
    restart = start_restart(restart_args(job, args), site.config)
    assert restart.wait(timeout=120) == 9, restart.stderr.read() if restart.stderr else ""
    numbers = job.counts()
    assert numbers[-1] == 400 and numbers == sorted(numbers)
    # one run folder for the job: named by the exec PID it sees, the same in every namespace
    assert {g.parent.name for g in site.generations("802.head")} == {f"{pids[0]}.802.head"}


def test_sigkill_to_the_restart_session_leaves_nothing_of_the_job(user_mode: Site) -> None:
    """qdel's second signal: pbs_mom SIGKILLs the task's session (mom-restart and the namespace's
    holder, root's); the job's processes, in their own session inside the namespace, end with it."""
    site = user_mode
    job = site.start_job("803.head", app_env={"COUNTER_IGNORE_TERM": "1"})
    pids = [job.exec_pid(), job.app_pid()]
    args, _ = qhold_and_lose(site, job)
    restart = start_restart(restart_args(job, args), site.config)
    on_node = list(wait_restored_as(restart, pids).values())
    session = [p for p in psutil.pids() if _session(p) == restart.pid]
    assert restart.pid in session and not set(on_node) & set(session)
    for pid in session:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    restart.wait(timeout=30)
    wait_not_running(on_node, "the job's processes outlived its session", timeout=10)


def test_without_namespaces_a_held_pid_is_still_exit_82(user_mode: Site) -> None:
    """backends.criu.pid_namespace = false restores beside the node's processes, as before: a PID of
    the image that another process holds is refused with its own code, the job untouched."""
    site = user_mode
    site.configure(**without_namespaces())
    job = site.start_job("804.head")
    args = site.torque_args(job)
    assert call_hook(args, site.config).returncode == 0  # --leave-running: the PIDs stay taken
    restart = start_restart(restart_args(job, args), site.config)
    assert restart.wait(timeout=60) == 82
    assert job.is_running()
    assert not [e for e in site.log_events() if e["event"] == "restart.namespace"]
    # the same image restores beside its still running original when the namespace is on
    site.configure(**{"backends.criu.run_as": "job-user"})
    twin = start_restart(["--job", "804.head"], site.config, stdout=subprocess.DEVNULL)
    try:
        found = wait_restored_as(twin, [job.exec_pid()])
        assert inside_pid(found[job.exec_pid()]) == job.exec_pid() and job.is_running()
    finally:
        twin.terminate()
        twin.wait(timeout=30)


def _session(pid: int) -> int:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return -1


def test_a_node_that_cannot_make_namespaces_restores_without_them_and_says_so(user_mode: Site) -> None:
    """Issue 28 #4: where the kernel or the privileges do not allow a namespace (here: mom-restart
    started without CAP_SYS_ADMIN), the restore falls back to the node's PID namespace, as before, and
    the log says why; nothing else differs."""
    site = user_mode
    wrapper = site.base / "mom-restart-without-sys-admin"
    wrapper.write_text(f'#!/bin/sh\nexec setpriv --bounding-set=-sys_admin {installed("mom-restart")} "$@"\n')
    wrapper.chmod(0o755)
    job = site.start_job("805.head", app_env={"COUNTER_LIMIT": "60", "COUNTER_EXIT": "4"})
    pids = [job.exec_pid(), job.app_pid()]
    args, _ = qhold_and_lose(site, job)
    restart = start_restart(restart_args(job, args), site.config, program=wrapper)
    deadline = time.monotonic() + 30
    while not all(is_running(pid) for pid in pids):  # its own PIDs, on the node
        assert time.monotonic() < deadline and restart.poll() is None, "the job was not restored"
        time.sleep(0.05)
    assert inside_pid(pids[0]) == pids[0] and os.getsid(pids[0]) == restart.pid
    assert restart.wait(timeout=90) == 4, restart.stderr.read() if restart.stderr else ""
    [fallback] = [e for e in site.log_events() if e["event"] == "restart.no_namespace"]
    assert "Operation not permitted" in fallback["reason"], fallback
    assert not [e for e in site.log_events() if e["event"] == "restart.namespace"]


def test_a_job_in_namespaces_of_its_users_making_is_refused(user_mode: Site) -> None:
    """Root enters only the namespaces a restart made and recorded: a job whose processes run in
    namespaces its user made (unshare -Urpf) is refused with one line before CRIU runs, untouched."""
    site = user_mode
    job = site.start_job("806.head", app=APPS / "in_own_namespaces.py")
    refused = call_hook(site.torque_args(job, signal_number=15), site.config)
    assert refused.returncode == 77, refused.stderr
    assert "namespaces that no restart of it made" in refused.stderr and refused.stderr.count("\n") == 1
    counted = job.count()
    assert job.wait_count(counted + 3) > counted, "a refused checkpoint must never end the job"
    assert site.generations("806.head") == []
    assert not [e for e in site.log_events() if e["event"] == "dump.done"], "CRIU ran"
    job.stop()

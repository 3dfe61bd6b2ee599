"""Every way the hook refuses or fails: the exit status, the one stderr line pbs_mom shows the user, and
that nothing changed on disk (and the job was not touched)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import filelock
import pytest

from tests.helpers import Site, User, assert_refused, call_hook, installed, is_running, wait_until_gone


@pytest.fixture
def psnc_site(site: Site) -> Site:
    site.configure(backend="psnc", **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))})
    return site


def test_missing_pid(psnc_site: Site) -> None:
    site = psnc_site
    ckdir = site.checkpoint_dir("201.head")
    args: list[object] = [
        4194000,
        "201.head",
        site.user.name,
        site.user.name,
        ckdir,
        "ckpt.201.head.1",
        0,
        "-",
    ]
    assert_refused(site, args, 66, "no process 4194000")
    assert_refused(site, [4194000, "201.head"], 66, "no process 4194000")


def test_pid_that_is_not_the_job_shell(psnc_site: Site) -> None:
    site = psnc_site
    job = site.start_job("202.head")
    args = site.torque_args(job)
    args[0] = job.app_pid()  # a process of the job, but not the leader of its session
    assert_refused(site, args, 66, "is not a session leader")
    assert job.is_running()


def test_pid_of_another_users_session(psnc_site: Site, root_user: User) -> None:
    site = psnc_site
    job = site.start_job("203.head", user=root_user)
    args = site.torque_args(job)
    args[2] = site.user.name  # EUSER says momtest, the session is root's
    assert_refused(site, args, 77, f"not to {site.user.name}")
    assert job.is_running()


@pytest.mark.parametrize("job_id", ["../x", "a/b", "..", "x;id", "$(id)", "a" * 201])
def test_unsafe_job_ids(psnc_site: Site, job_id: str) -> None:
    site = psnc_site
    job = site.start_job("204.head")
    args = site.torque_args(job)
    args[1] = job_id
    assert_refused(site, args, 64, "JOB_ID", direct=True)
    assert_refused(site, [job.session_id, job_id], 64, "JOB_ID", direct=True)


def test_empty_job_id(psnc_site: Site) -> None:
    site = psnc_site
    job = site.start_job("205.head")
    args = site.torque_args(job)
    args[1] = ""
    assert_refused(site, args, 64, "JOB_ID is empty", direct=True)


def test_wrong_argument_counts(psnc_site: Site) -> None:
    site = psnc_site
    job = site.start_job("206.head")
    args = site.torque_args(job)
    # qsub -c 'enabled,dir=/x y': pbs_mom's shell splits the directory into two words (9 arguments)
    injected = [*args[:4], "/x", "y", *args[5:]]
    assert_refused(site, injected, 64, "got 9")
    assert_refused(site, args[:7], 64, "got 7")
    assert_refused(site, [job.session_id], 64, "got 1")
    assert job.is_running()


def test_checkpoint_dir_outside_the_roots_or_through_a_symlink(psnc_site: Site, tmp_path: Path) -> None:
    site = psnc_site
    job = site.start_job("207.head")
    args = site.torque_args(job)
    outside = list(args)
    outside[4] = "/tmp"
    assert_refused(site, outside, 77, "outside the allowed roots")
    link = site.torque_root / "207.link.CK"
    link.symlink_to("/tmp")
    through_link = list(args)
    through_link[4] = link
    assert_refused(site, through_link, 77, "symlink")
    dotdot = list(args)
    dotdot[4] = f"{site.torque_root}/../../x"
    assert_refused(site, dotdot, 77, "not a plain absolute path")


def test_unknown_config_key_and_bad_values(psnc_site: Site) -> None:
    site = psnc_site
    job = site.start_job("208.head")
    args = site.torque_args(job)
    site.configure(text=site.config.read_text() + "kepe = 3\n")
    assert_refused(site, args, 78, "kepe: unknown key")
    site.configure(keep=-1)
    assert_refused(site, args, 78, "keep: must be at least 1")
    site.configure(timeout_s="soon")
    assert_refused(site, args, 78, "timeout_s: expected a number")
    site.configure(**{"backends.criu.run_as": "nobody"})
    assert_refused(site, args, 78, "backends.criu.run_as: must be one of")


def test_checkpointer_missing(site: Site) -> None:
    site.configure(backend="psnc", **{"backends.psnc.chkpnt": "/nonexistent/chkpnt"})
    job = site.start_job("209.head")
    assert_refused(site, site.torque_args(job), 69, "/nonexistent/chkpnt")
    site.configure(backend="blcr", **{"backends.blcr.cr_checkpoint": "cr_checkpoint_not_installed"})
    assert_refused(site, site.torque_args(job), 69, "cr_checkpoint_not_installed not found")


def test_checkpointer_failing(site: Site) -> None:
    site.configure(backend="psnc", **{"backends.psnc.chkpnt": str(site.standin("chkpnt", STANDIN_FAIL="5"))})
    job = site.start_job("210.head")
    stderr = assert_refused(site, site.torque_args(job, signal_number=15), 80, "psnc failed (exit 5)")
    assert "Input/output error" in stderr  # the checkpointer's own reason reaches the job comment
    assert job.is_running(), "a failed checkpoint with SIGNAL 15 must never end the job"
    assert site.incoming() == []


def test_checkpointer_failing_half_way_leaves_nothing(site: Site) -> None:
    site.configure(
        backend="psnc", **{"backends.psnc.chkpnt": str(site.standin("chkpnt", STANDIN_PARTIAL="1"))}
    )
    job = site.start_job("211.head")
    assert_refused(site, site.torque_args(job), 80, "No space left on device")
    assert site.incoming() == [] and site.generations("211.head") == []


def test_checkpointer_hanging_past_timeout(site: Site) -> None:
    site.configure(
        backend="psnc",
        timeout_s=1,
        **{"backends.psnc.chkpnt": str(site.standin("chkpnt", STANDIN_HANG="60"))},
    )
    job = site.start_job("212.head")
    # the checkpointer hangs for 60 s: a hook that waited for it would not end within the 30 s given
    assert_refused(site, site.torque_args(job, signal_number=15), 81, "timeout_s=1", timeout=30)
    hung = [c["pid"] for c in site.standin_calls()]
    wait_until_gone(hung, timeout=10)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in hung), "the hung checkpointer was not killed"
    count = job.count()
    assert job.wait_count(count + 3) > count, "the job must keep running after a timed-out checkpoint"


def test_second_checkpoint_of_a_job_while_one_runs(site: Site) -> None:
    site.configure(backend="psnc", **{"backends.psnc.chkpnt": str(site.standin("chkpnt", STANDIN_HANG="8"))})
    job = site.start_job("213.head")
    args = site.torque_args(job)
    first = subprocess.Popen(
        [str(installed("mom-checkpoint")), *map(str, args)],
        env={"PATH": "/bin:/usr/bin", "MOM_CHECKPOINT_CONFIG": str(site.config)},
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not site.standin_calls() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert site.standin_calls(), "the first checkpoint never started its checkpointer"
    [checkpointer] = [c["pid"] for c in site.standin_calls()]
    result = call_hook(args, site.config)
    assert result.returncode == 75, result.stderr
    # the first call holds the job's lock as long as its checkpointer runs (8 s)
    assert is_running(checkpointer), "a busy job must be refused at once, not waited for"
    assert f"another checkpoint of job 213.head is running (pid {first.pid}" in result.stderr
    assert first.wait(timeout=60) == 0
    assert len(site.generations("213.head")) == 1


def test_node_wide_cap_waits_then_gives_up(psnc_site: Site) -> None:
    site = psnc_site
    site.configure(
        backend="psnc", max_concurrent=1, timeout_s=1, **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))}
    )
    job = site.start_job("214.head")
    locks = site.spool / ".locks"
    locks.mkdir(mode=0o700)
    held = threading.Event()
    release = threading.Event()

    def hold_slot() -> None:
        with filelock.FileLock(str(locks / "slot-0.lock")):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold_slot)
    holder.start()
    try:
        held.wait(10)
        result = call_hook(site.torque_args(job), site.config)
        assert result.returncode == 75, result.stderr
        assert "max_concurrent=1" in result.stderr
    finally:
        release.set()
        holder.join()
    result = call_hook(site.torque_args(job), site.config)
    assert result.returncode == 0, result.stderr


def test_disk_too_small(site: Site) -> None:
    small = site.base / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0711", "tmpfs", str(small)], check=True)
    try:
        site.configure(
            backend="psnc",
            spool_dir=str(small / "spool"),
            **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))},
        )
        job = site.start_job("215.head", app_env={"COUNTER_MIB": "16"})
        assert_refused(site, site.torque_args(job), 74, "free")
        assert job.is_running()
        # a checkpointer that runs out of space half way: clean failure, earlier generations intact
        site.configure(
            backend="psnc",
            spool_dir=str(small / "spool"),
            space_margin=0,
            **{"backends.psnc.chkpnt": str(site.standin("chkpnt", STANDIN_IMAGE_BYTES="1000"))},
        )
        assert call_hook(site.torque_args(job), site.config).returncode == 0
        [good] = sorted((small / "spool").glob("*.215.head/0*"))
        site.configure(
            backend="psnc",
            spool_dir=str(small / "spool"),
            space_margin=0,
            **{"backends.psnc.chkpnt": str(site.standin("chkpnt", STANDIN_IMAGE_BYTES=str(8 * 2**20)))},
        )
        result = call_hook(site.torque_args(job), site.config)
        assert result.returncode in (74, 80), result.stderr
        assert sorted((small / "spool").glob("*.215.head/0*")) == [good]
        assert list((small / "spool").glob("*/.incoming-*")) == []
        assert job.is_running()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)

"""The hook on real CRIU, driven the way pbs_mom drives it (installed console script, /bin/sh -c,
PATH=/bin:/usr/bin, stderr read back)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.helpers import Site, User, call_hook, modes_below, verify_generation

pytestmark = pytest.mark.usefixtures("criu")


def test_periodic_checkpoint_in_job_user_mode_keeps_the_job_running(site: Site) -> None:
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("101.head")
    exec_pid, app_pid = job.exec_pid(), job.app_pid()
    args = site.torque_args(job)

    result = call_hook(args, site.config)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    before = job.count()
    assert job.wait_count(before + 5) > before, "the job stopped counting after the checkpoint"
    [generation] = site.generations("101.head")
    assert generation.parent.name == f"{exec_pid}.101.head"
    assert generation.name.startswith("000001-")
    manifest = verify_generation(generation)
    assert manifest["schema"] == 5
    assert manifest["job"]["id"] == "101.head"
    assert manifest["job"]["exec_pid"] == exec_pid
    assert manifest["job"]["session_id"] == job.session_id
    assert manifest["job"]["user"] == site.user.name
    assert manifest["call"]["convention"] == "torque"
    assert manifest["backend"]["name"] == "criu"
    assert manifest["backend"]["run_as"] == "job-user"
    assert manifest["backend"]["version"].split(".")[0].isdigit()
    command = manifest["backend"]["command"]
    assert command[1:4] == ["dump", "-t", str(exec_pid)]
    assert "--shell-job" in command and "--leave-running" in command and "--unprivileged" in command
    assert manifest["times"]["frozen_s"] is not None and manifest["times"]["frozen_s"] > 0
    assert manifest["stats"]["memory_pages_written"] > 0
    assert {p["pid"] for p in manifest["processes"]} >= {exec_pid, app_pid}
    app = next(p for p in manifest["processes"] if p["pid"] == app_pid)
    assert str(job.output) in {fd["target"] for fd in app["fds"] if fd["fd"] == 1}
    assert manifest["total_bytes"] == sum(f["size"] for f in manifest["files"]) > 0
    # the image belongs to the job's user; nothing anywhere is readable or writable by others
    for path in (generation / "image").iterdir():
        assert path.stat().st_uid == site.user.uid
    for path, mode in modes_below(site.spool):
        assert mode & 0o066 == 0, f"{path} has mode {mode:o}"
    # pbs_mom's CHECKPOINT_DIR/CHECKPOINT_NAME: a pointer the job's user can read, naming the generation
    pointer = Path(str(args[4])) / str(args[5])
    st = pointer.stat()
    assert stat.S_ISREG(st.st_mode) and st.st_uid == site.user.uid and st.st_mode & 0o777 == 0o600
    assert json.loads(pointer.read_text())["generation"] == str(generation)
    events = [e["event"] for e in site.log_events()]
    assert events[0] == "checkpoint.start" and events[-1] == "checkpoint.done"
    assert all(e["job_id"] == "101.head" for e in site.log_events())


def test_the_job_memory_is_hashed_while_criu_writes_it_and_the_digest_is_the_whole_file(site: Site) -> None:
    # The follower hashes pages-N.img as CRIU appends to it, and the hashing after the dump takes over
    # from where it got: the digest recorded must still be that of every byte of the published file.
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("107.head", app_env={"COUNTER_MIB": "192"})

    result = call_hook(site.torque_args(job), site.config)

    assert result.returncode == 0, result.stderr
    [generation] = site.generations("107.head")
    manifest = verify_generation(generation)  # every file hashed again from its first byte
    pages = [f for f in manifest["files"] if f["path"].startswith("image/pages-")]
    assert sum(f["size"] for f in pages) > 192 << 20
    [done] = [e for e in site.log_events() if e["event"] == "dump.done"]
    [published] = [e for e in site.log_events() if e["event"] == "generation.published"]
    assert "follow_error" not in done, done
    # part of the memory was hashed before the dump ended, and the hashing after it took that over
    # instead of reading it again (how much: the benchmark's "hashed while criu wrote it" row)
    assert 0 < done["hashed_meanwhile"] <= sum(f["size"] for f in pages), done
    assert published["hashed_during_dump"] == done["hashed_meanwhile"], published
    assert job.is_running()


def test_repeated_checkpoints_keep_config_keep_or_torque_depth(site: Site) -> None:
    site.configure(keep=2, **{"backends.criu.run_as": "job-user"})
    job = site.start_job("102.head")
    for _ in range(4):
        result = call_hook(site.torque_args(job), site.config)
        assert result.returncode == 0, result.stderr
    names = [g.name[:6] for g in site.generations("102.head")]
    assert names == ["000003", "000004"]
    for _ in range(2):
        result = call_hook(site.torque_args(job, depth="3"), site.config)
        assert result.returncode == 0, result.stderr
    names = [g.name[:6] for g in site.generations("102.head")]
    assert names == ["000004", "000005", "000006"]
    for generation in site.generations("102.head"):
        verify_generation(generation)
    assert site.incoming() == []
    assert job.is_running()


def test_signal_15_ends_the_job_after_a_complete_checkpoint(site: Site) -> None:
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("103.head")

    result = call_hook(site.torque_args(job, signal_number=15), site.config)

    assert result.returncode == 0, result.stderr
    job.wait_ended()
    [generation] = site.generations("103.head")
    manifest = verify_generation(generation)
    assert "--leave-running" not in manifest["backend"]["command"]
    assert manifest["backend"]["ended_job"] is True
    assert manifest["call"]["signal"] == 15


def test_seed_convention_writes_exec_pid_dot_job_id(site: Site) -> None:
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("104.head")

    result = call_hook([job.session_id, job.job_id], site.config)

    assert result.returncode == 0, result.stderr
    [generation] = site.generations("104.head")
    assert generation.parent.name == f"{job.exec_pid()}.104.head"
    manifest = verify_generation(generation)
    assert manifest["call"]["convention"] == "seed"
    assert manifest["call"]["checkpoint_dir"] is None
    assert job.is_running()


def test_root_mode_on_a_root_owned_job(site: Site, root_user: User) -> None:
    # Root here lacks CAP_SYS_RESOURCE and cannot dump another user's process (CRIU.md); on a root-owned
    # job root mode works as it does on a real node.
    site.configure(**{"backends.criu.run_as": "root"})
    site.user = root_user
    job = site.start_job("105.head", user=root_user)

    result = call_hook(site.torque_args(job), site.config)

    assert result.returncode == 0, result.stderr
    [generation] = site.generations("105.head")
    manifest = verify_generation(generation)
    assert "--unprivileged" not in manifest["backend"]["command"]
    for path in [generation, *generation.rglob("*")]:
        st = path.lstat()
        assert st.st_uid == 0
        assert st.st_mode & 0o077 == 0, f"{path} has mode {st.st_mode & 0o777:o}"
    assert os.stat(generation.parent).st_mode & 0o777 == 0o700
    assert job.is_running()

"""keeping.keep_held: which files a job reads are kept with a generation, and under which name the dump
will know them (CRIU's --external file[mnt_id:inode])."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mom_checkpoint.image.manifest import parse
from mom_checkpoint.platform.errors import VerificationFailed
from mom_checkpoint.processes.discovery import OpenFile, ProcessRecord
from mom_checkpoint.processes.identity import of_uid
from mom_checkpoint.spool.keeping import HELD_MAX, keep_held
from tests.helpers import User
from tests.torque import manifest

ROOT = of_uid(0)


def _me(fds: list[OpenFile]) -> ProcessRecord:
    return ProcessRecord(os.getpid(), os.getppid(), "python3", "", [], "/", 0, 0, 0, 0.0, os.getsid(0), fds)


def _held(fd: int, flags: int = os.O_RDONLY) -> OpenFile:
    return OpenFile(fd, os.readlink(f"/proc/self/fd/{fd}"), "file", flags)


@pytest.fixture
def generation(tmp_path: Path) -> Path:
    path = tmp_path / "generation"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def opened() -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def _open(path: Path, flags: int, opened: list[int]) -> int:
    fd = os.open(path, flags | os.O_CLOEXEC)
    opened.append(fd)
    return fd


def test_an_unlinked_file_is_kept_under_its_mount_and_inode(
    tmp_path: Path, generation: Path, opened: list[int]
) -> None:
    """The copy a restore handed back is unlinked: at the next checkpoint it is kept like any other
    (dumped as a ghost file instead, a restore re-creates it in a folder that is gone, and fails)."""
    script = tmp_path / "42.vm.SC"
    script.write_bytes(b"#!/bin/sh\nsleep 1\n")
    script.chmod(0o540)
    fd = _open(script, os.O_RDONLY, opened)
    os.lseek(fd, 5, os.SEEK_SET)
    script.unlink()
    [copy] = keep_held([_me([_held(fd)])], generation, ROOT)
    assert copy.path.endswith(" (deleted)") and copy.pos == 5 and copy.mode == 0o540
    fdinfo = Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
    mnt_id = next(int(line.split()[1]) for line in fdinfo if line.startswith("mnt_id:"))
    assert copy.external == f"file[{mnt_id:x}:{os.fstat(fd).st_ino:x}]"
    assert (generation / copy.copy).read_bytes() == b"#!/bin/sh\nsleep 1\n"


def test_one_copy_of_a_file_held_twice_and_none_of_what_is_not_kept(
    tmp_path: Path, generation: Path, opened: list[int]
) -> None:
    shared, written, large, setuid = (tmp_path / name for name in ("shared", "written", "large", "setuid"))
    shared.write_text("input\n")
    written.write_text("log\n")
    large.write_bytes(b"x" * (HELD_MAX + 1))
    setuid.write_text("s\n")
    setuid.chmod(0o4755)
    fds = [
        _held(_open(shared, os.O_RDONLY, opened)),
        _held(_open(shared, os.O_RDONLY, opened)),  # another description of the same file: one copy
        _held(_open(written, os.O_RDONLY, opened)),
        _held(_open(written, os.O_WRONLY | os.O_APPEND, opened), os.O_WRONLY | os.O_APPEND),
        _held(_open(large, os.O_RDONLY, opened)),
        _held(_open(setuid, os.O_RDONLY, opened)),
    ]
    copies = keep_held([_me(fds)], generation, ROOT)
    # the file it also writes is not kept: the dump would name its writer external too, and the
    # restored job would write into the copy; too large and set-id files are CRIU's to reopen
    assert [c.path for c in copies] == [str(shared)]
    assert sorted(p.name for p in (generation / "kept").iterdir()) == ["held-0"]


def test_a_manifest_with_a_forged_external_name_or_mode_is_refused() -> None:
    """The name goes into CRIU's command line as --inherit-fd fd[N]:<name>: only file[hex:hex]; the
    mode becomes the copy's: permission bits only."""
    kept = {
        "path": "/x",
        "copy": "kept/held-0",
        "role": "held",
        "pos": 0,
        "size": 1,
        "digest": "blake3:" + "0" * 64,
    }
    for external, mode in (
        ("file[1a:2b] --action-script /tmp/x", 0o644),
        ("fd[3]", 0o644),
        ("file[1:2]", 0o4755),
    ):
        with pytest.raises(VerificationFailed, match="kept file it cannot have"):
            parse(_with_kept({**kept, "external": external, "mode": mode}), "m")
    [good] = parse(_with_kept({**kept, "external": "file[1a:2b]", "mode": 0o644}), "m").kept
    assert (good.external, good.mode) == ("file[1a:2b]", 0o644)


def test_a_schema_2_manifest_reads_with_its_held_files_named_by_path() -> None:
    kept = {"path": "/x", "copy": "kept/held-0", "role": "held", "pos": 0, "size": 1, "sha256": "0" * 64}
    [old] = parse({**_with_kept(kept), "schema": 2}, "m").kept
    assert (old.path, old.external, old.mode) == ("/x", "", 0)
    assert old.digest == "sha256:" + "0" * 64  # checked with sha256, as it was recorded


def _with_kept(kept: dict[str, object]) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        manifest("42.head", 1, "000001-20261130T000000Z", 4711, 1.0).to_json()
    )
    data["kept"] = [kept]
    return data


def test_a_file_the_owner_cannot_read_is_never_kept(generation: Path, job_user: User) -> None:
    """A user's process may hold a root-only file it cannot read (O_PATH needs no read permission;
    a descriptor root handed it): root reads only what the owner could open, or a restore would
    hand the user a readable copy of it."""
    folder = Path(tempfile.mkdtemp(prefix="mom-checkpoint-test-"))  # a folder the user can pass through
    folder.chmod(0o755)
    secret = folder / "secret"
    secret.write_text("root's secret\n")
    secret.chmod(0o600)
    with open(secret, "rb") as readable:  # root opens it for the process, read-only
        given = readable.fileno()
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(secret)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            user=job_user.uid, group=job_user.gid, extra_groups=[], pass_fds=[readable.fileno()],
        )  # fmt: skip
    try:
        assert holder.stdout is not None
        ready, own = holder.stdout.readline().split()
        assert ready == b"ready"
        fds = [
            OpenFile(fd, os.readlink(f"/proc/{holder.pid}/fd/{fd}"), "file", _flags(holder.pid, fd))
            for fd in (given, int(own))  # the read-only descriptor root gave it, and its own O_PATH one
        ]
        assert fds[1].flags is not None and fds[1].flags & os.O_PATH
        record = ProcessRecord(
            holder.pid, os.getpid(), "python3", "", [], "/", job_user.uid, job_user.gid, 0, 0.0, 0, fds
        )
        owner = of_uid(job_user.uid)
        assert keep_held([record], generation, owner) == []
        assert not (generation / "kept").exists()
    finally:
        holder.kill()
        holder.wait()
        shutil.rmtree(folder)


HOLD = """
import os, sys
fd = os.open(sys.argv[1], os.O_PATH)  # allowed to anyone who can reach the folder
print("ready", fd, flush=True)
sys.stdin.read()
"""


def _flags(pid: int, fd: int) -> int:
    line = next(
        x for x in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines() if x.startswith("flags:")
    )
    return int(line.split()[1], 8)

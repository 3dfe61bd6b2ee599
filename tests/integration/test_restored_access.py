"""access.problems: what a restored process holds that its owner could not open by path (root mode:
root's CRIU reopened the job's files by their paths). Played with processes of the test user that
were handed, by root, what a hostile path swap would make root's CRIU hand them."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mom_checkpoint import access, identity
from tests.helpers import User


@pytest.fixture
def owner(job_user: User) -> identity.JobUser:
    return identity.of_name(job_user.name)


@pytest.fixture
def folder(job_user: User) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mom-checkpoint-access-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def holding(user: identity.JobUser, fds: list[int], cwd: str | Path = "/") -> subprocess.Popen[bytes]:
    """A process of ``user`` that holds these descriptors (handed over by root), in ``cwd``."""
    return subprocess.Popen(
        ["/usr/bin/python3", "-c", "import time; time.sleep(60)"],
        pass_fds=fds,
        user=user.uid,
        group=user.gid,
        extra_groups=list(user.groups),
        cwd=cwd,
    )


def test_files_the_owner_can_open_pass(owner: identity.JobUser, folder: Path) -> None:
    mine = folder / "input.dat"
    mine.write_text("data")
    os.chown(mine, owner.uid, owner.gid)
    fd = os.open(mine, os.O_RDWR)
    proc = holding(owner, [fd], cwd=folder)
    try:
        os.close(fd)
        assert access.problems([proc.pid], owner) == []
    finally:
        proc.kill()
        proc.wait()


def test_a_root_only_file_or_folder_handed_to_the_job_is_found(owner: identity.JobUser, folder: Path) -> None:
    secret = folder / "secret"
    secret.write_text("root's")
    secret.chmod(0o600)
    private = folder / "private"
    private.mkdir(mode=0o700)
    inner = private / "open"
    inner.mkdir(mode=0o755)  # readable in itself, but behind a folder the owner cannot pass
    fd = os.open(secret, os.O_RDONLY)
    proc = holding(owner, [fd], cwd=inner)
    try:
        os.close(fd)
        found = access.problems([proc.pid], owner)
    finally:
        proc.kill()
        proc.wait()
    assert any(str(secret) in p and "cannot open" in p for p in found), found
    assert any(str(inner) in p and "working folder" in p for p in found), found


def test_a_root_only_file_mapped_into_the_job_is_found(owner: identity.JobUser, folder: Path) -> None:
    """root's CRIU maps the files of a job's memory by their paths too."""
    secret = folder / "mapped"
    secret.write_bytes(b"x" * 4096)
    secret.chmod(0o600)
    code = (
        "import mmap, os, sys, time\n"
        "f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); f.close()\n"
        "os.setgroups([]); os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[2]))\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-c", code, str(secret), str(owner.uid), str(owner.gid)], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        found = access.problems([proc.pid], owner)
    finally:
        proc.kill()
        proc.wait()
    assert any(str(secret) in p and "a mapping" in p for p in found), found

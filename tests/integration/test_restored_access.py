"""access.problems: what a restored process holds that its owner could not open by path (root mode:
root's CRIU reopened the job's files by their paths). Played with processes of the test user that
were handed, by root, what a hostile path swap would make root's CRIU hand them."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mom_checkpoint.processes import access, identity
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
    """A process of ``user`` that holds these descriptors (handed over by root), in ``cwd``, once it
    has started: while the dynamic loader runs it maps /etc/ld.so.cache for a moment, and a look at
    its mappings then may find one gone before it is looked at."""
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-c", "import os, time; os.write(1, b'ready'); time.sleep(60)"],
        pass_fds=fds,
        user=user.uid,
        group=user.gid,
        extra_groups=list(user.groups),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # not pytest's own capture files (root's, deleted)
    )
    assert proc.stdout is not None and proc.stdout.read(5) == b"ready"
    return proc


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
    assert any(str(secret) in p and "cannot read" in p for p in found), found
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
        ["/usr/bin/python3", "-c", code, str(secret), str(owner.uid), str(owner.gid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        found = access.problems([proc.pid], owner)
    finally:
        proc.kill()
        proc.wait()
    assert any(str(secret) in p and "a mapping" in p for p in found), found


def mapped_by_owner(user: identity.JobUser, path: Path, prot: str, *, shared_write: bool = False) -> str:
    """Python run by root that maps ``path`` with ``prot`` (names from mmap), then becomes ``user``."""
    mode = "'r+b'" if shared_write else "'rb'"
    return (
        "import mmap, os, sys, time\n"
        f"f = open(sys.argv[1], {mode}); m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot={prot})\n"
        "f.close()\n"
        f"os.setgroups([]); os.setgid({user.gid}); os.setuid({user.uid})\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )


def problems_of_mapping(
    user: identity.JobUser, path: Path, prot: str, *, shared_write: bool = False
) -> list[str]:
    code = mapped_by_owner(user, path, prot, shared_write=shared_write)
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-c", code, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        return access.problems([proc.pid], user)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("mode", [0o600, 0o711])
def test_a_root_only_file_mapped_executable_is_found(
    owner: identity.JobUser, folder: Path, mode: int
) -> None:
    """Issue 25 #1: an r-x mapping was only looked up (O_PATH), so a root-only file swapped in for a
    library of the job came back mapped, readable, in the restored process. Execute permission alone
    (0711) is not enough either: the mapped bytes are readable memory."""
    secret = folder / "library.so"
    secret.write_bytes(b"\x7fELF" + b"s" * 4092)
    secret.chmod(mode)
    found = problems_of_mapping(owner, secret, "mmap.PROT_READ | mmap.PROT_EXEC")
    assert any(str(secret) in p and "a mapping" in p and "cannot read" in p for p in found), found


def test_a_shared_writable_mapping_needs_write_access(owner: identity.JobUser, folder: Path) -> None:
    readable = folder / "shared.dat"
    readable.write_bytes(b"d" * 4096)
    readable.chmod(0o644)  # the owner may read it, not write it
    found = problems_of_mapping(owner, readable, "mmap.PROT_READ | mmap.PROT_WRITE", shared_write=True)
    assert any(str(readable) in p and "cannot write" in p and "cannot read" not in p for p in found), found


def test_a_readable_library_mapped_executable_passes(owner: identity.JobUser, folder: Path) -> None:
    library = folder / "mine.so"
    library.write_bytes(b"\x7fELF" + b"m" * 4092)
    library.chmod(0o755)
    assert problems_of_mapping(owner, library, "mmap.PROT_READ | mmap.PROT_EXEC") == []


def held_by_owner(owner: identity.JobUser, fd: int) -> list[str]:
    proc = holding(owner, [fd])
    try:
        os.close(fd)
        return access.problems([proc.pid], owner)
    finally:
        proc.kill()
        proc.wait()


def test_a_root_only_fifo_held_for_writing_is_found(owner: identity.JobUser, folder: Path) -> None:
    """Issue 25 #1: FIFOs (and devices) were skipped, so an O_RDWR descriptor of a root-only FIFO
    passed and the restored process wrote into it."""
    fifo = folder / "control"
    os.mkfifo(fifo, 0o600)
    found = held_by_owner(owner, os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
    assert any(str(fifo) in p and "fd " in p and "cannot read or write" in p for p in found), found


def test_a_root_only_device_is_found_and_never_opened(owner: identity.JobUser, folder: Path) -> None:
    node = folder / "null-of-root"
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers, root's alone
    found = held_by_owner(owner, os.open(node, os.O_WRONLY))
    assert any(str(node) in p and "cannot write" in p for p in found), found


def test_a_file_the_owner_may_read_but_not_write_held_for_writing_is_found(
    owner: identity.JobUser, folder: Path
) -> None:
    log = folder / "root.log"
    log.write_text("root's log")
    log.chmod(0o644)
    found = held_by_owner(owner, os.open(log, os.O_WRONLY | os.O_APPEND))
    assert any(str(log) in p and "cannot write" in p for p in found), found


def test_an_o_path_descriptor_needs_only_to_reach_the_file(owner: identity.JobUser, folder: Path) -> None:
    """The owner could open the same O_PATH descriptor themselves: no read permission is needed."""
    secret = folder / "secret"
    secret.write_text("root's")
    secret.chmod(0o600)
    assert held_by_owner(owner, os.open(secret, access.O_PATH)) == []


def test_a_working_folder_the_owner_cannot_enter_is_found(owner: identity.JobUser, folder: Path) -> None:
    shut = folder / "shut"
    shut.mkdir(mode=0o700)  # reachable by its path, but not searchable by the owner
    proc = holding(owner, [], cwd=shut)
    try:
        found = access.problems([proc.pid], owner)
    finally:
        proc.kill()
        proc.wait()
    assert any(str(shut) in p and "working folder" in p and "cannot execute" in p for p in found), found


def test_a_root_only_file_made_deleted_before_the_check_is_still_found(
    owner: identity.JobUser, folder: Path
) -> None:
    """Review of issue 25 #1: deleted files were skipped, so a root-only file root's CRIU opened by a
    swapped path, then made deleted (a rename over it, as passwd does to /etc/shadow) before the
    gate looked, passed, as descriptor and as mapping. The inode itself is checked now."""
    secret = folder / "shadow"
    secret.write_bytes(b"s" * 4096)
    secret.chmod(0o600)
    fd = os.open(secret, os.O_RDONLY)
    proc = holding(owner, [fd])
    mapper = subprocess.Popen(
        ["/usr/bin/python3", "-c", mapped_by_owner(owner, secret, "mmap.PROT_READ"), str(secret)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        os.close(fd)
        assert mapper.stdout is not None and mapper.stdout.readline() == b"ready\n"
        secret.unlink()
        found = access.problems([proc.pid, mapper.pid], owner)
    finally:
        for p in (proc, mapper):
            p.kill()
            p.wait()
    assert any(str(secret) in p and "fd " in p and "cannot read" in p for p in found), found
    assert any(str(secret) in p and "a mapping" in p and "cannot read" in p for p in found), found


def test_the_owners_own_deleted_file_passes(owner: identity.JobUser, folder: Path) -> None:
    """What CRIU restores from a ghost file: the owner's, without a name. Nothing to refuse."""
    scratch = folder / "scratch"
    scratch.write_text("mine")
    os.chown(scratch, owner.uid, owner.gid)
    scratch.chmod(0o600)
    fd = os.open(scratch, os.O_RDWR)
    proc = holding(owner, [fd])
    try:
        os.close(fd)
        scratch.unlink()
        assert access.problems([proc.pid], owner) == []
    finally:
        proc.kill()
        proc.wait()


def test_another_processes_proc_file_is_found(owner: identity.JobUser) -> None:
    """Review of issue 25 #1: /proc/PID/maps of a root process is 0444, protected when it is opened
    (a ptrace check), so the mode bits say nothing: a job given one by a swapped path would read a
    root process's memory layout. Only the tree's own /proc/PID entries may be held."""
    fd = os.open(f"/proc/{os.getpid()}/maps", os.O_RDONLY)  # this root process's
    proc = holding(owner, [fd])
    try:
        os.close(fd)
        found = access.problems([proc.pid], owner)
        own = os.open(f"/proc/{proc.pid}/status", os.O_RDONLY)
        mine = holding(owner, [own])
        try:
            os.close(own)
            assert not [p for p in access.problems([mine.pid, proc.pid], owner) if "/status" in p]
        finally:
            mine.kill()
            mine.wait()
    finally:
        proc.kill()
        proc.wait()
    assert any(f"/proc/{os.getpid()}/maps" in p and "of the kernel's" in p for p in found), found

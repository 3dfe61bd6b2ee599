"""The image bound grows only with what CRIU really copies (issue 25 #3): a job's memory and the files
it holds that have no name left (ghost files, memfds), each inode once, never with the number of its
descriptors. Before, each descriptor, even of /dev/null, added a ghost file's allowance (1 MiB)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mom_checkpoint.image.size import IMAGE_MARGIN, image_limit
from mom_checkpoint.processes import discovery

MIB = 1 << 20

HOLDER = r"""
import mmap, os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
folder, what = sys.argv[1], sys.argv[2]
held = []
if "devnull" in what:
    held += [os.open("/dev/null", os.O_RDONLY) for _ in range(1500)]
if "deleted" in what:  # 3 MiB, held by 200 descriptors and a mapping, then unlinked
    path = os.path.join(folder, "scratch")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"x" * (3 << 20))
    held += [os.dup(fd) for _ in range(200)]
    held.append(mmap.mmap(fd, 3 << 20, mmap.MAP_SHARED))
    os.unlink(path)
if "linked" in what:  # unlinked here, but another name is left: CRIU links it again, copies nothing
    path = os.path.join(folder, "data")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"y" * (2 << 20))
    os.link(path, os.path.join(folder, "other-name"))
    os.unlink(path)
    held.append(fd)
if "mapped" in what:  # a deleted file mapped only: its descriptor closed
    path = os.path.join(folder, "mapped")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"z" * (512 << 10))
    held.append(mmap.mmap(fd, 512 << 10, mmap.MAP_PRIVATE, mmap.PROT_READ))
    os.close(fd)
    os.unlink(path)
if "memfd" in what:  # 4 MiB of shared memory nothing maps: in no process's RSS, all in the image
    fd = os.memfd_create("job-data")
    os.write(fd, b"m" * (4 << 20))
    held += [fd, os.dup(fd)]
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mom-checkpoint-limit-"))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def _held(folder: Path, what: str) -> tuple[subprocess.Popen[str], discovery.JobProcesses]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), what],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
    record = discovery._record(psutil.Process(holder.pid))
    job = discovery.JobProcesses(holder.pid, holder.pid, "root", 0, 0, [record])
    return holder, job


def _beyond_memory(job: discovery.JobProcesses, ghost_limit: int) -> int:
    return image_limit(job, ghost_limit) - 2 * (job.resident_bytes + job.swap_bytes) - IMAGE_MARGIN


def _ended(holder: subprocess.Popen[str]) -> None:
    holder.communicate("")


def test_descriptors_of_files_with_a_name_add_nothing(folder: Path) -> None:
    holder, job = _held(folder, "devnull linked")
    try:
        assert sum(1 for fd in job.tree[0].fds if fd.target == "/dev/null") == 1500
        assert _beyond_memory(job, MIB) == 0  # it was 1,500 MiB and more
    finally:
        _ended(holder)


def test_a_deleted_file_counts_once_at_its_size_up_to_the_ghost_limit(folder: Path) -> None:
    holder, job = _held(folder, "deleted")
    try:
        assert _beyond_memory(job, MIB) == MIB  # 201 descriptors and a mapping: one ghost file
        assert _beyond_memory(job, 8 * MIB) == 3 * MIB
    finally:
        _ended(holder)


def test_a_deleted_file_only_mapped_and_a_memfd_count_what_criu_copies(folder: Path) -> None:
    holder, job = _held(folder, "mapped")
    try:
        assert _beyond_memory(job, MIB) == 512 << 10
    finally:
        _ended(holder)
    holder, job = _held(folder, "memfd")
    try:
        assert _beyond_memory(job, MIB) == 4 * MIB  # its pages, not capped by the ghost limit
    finally:
        _ended(holder)

"""Issue 28 #6: what CRIU cannot checkpoint is found before the dump, from /proc (descriptors read with
readlink, the path column of maps), and refused with one line for the job's comment."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mom_checkpoint.processes import devices
from mom_checkpoint.processes.devices import Holding, kind_of, refusal, undumpable

MAPS = (
    "55d0c0000000-55d0c0001000 r--p 00000000 08:01 42                         /home/u/my data file.bin\n"
    "55d0c0001000-55d0c0002000 r--p 00000000 08:01 43                         /home/u/gone (deleted)\n"
    "7f0000000000-7f0000001000 rw-s 00000000 00:05 123                        /dev/nvidia0\n"
    "7f0000001000-7f0000002000 rw-s 00001000 00:05 123                        /dev/nvidia0\n"
    "7f0000003000-7f0000004000 rw-p 00000000 00:00 0 \n"
    "7f0000004000-7f0000005000 rw-s 00000000 00:01 7                          /dev/zero (deleted)\n"
    "7f0000005000-7f0000006000 r--p 00000000 08:01 44                         /home/u/dev/nvidia0\n"
    "7f0000006000-7f0000007000 rw-s 00000000 00:0e 99                         /dev/kfd (deleted)\n"
    "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n"
)


def fake_process(root: Path, pid: int, fds: dict[int, str], maps: str | bytes = "") -> None:
    """/proc/PID/fd with a link per descriptor (to a target that need not exist) and /proc/PID/maps."""
    (root / str(pid) / "fd").mkdir(parents=True)
    for number, target in fds.items():
        (root / str(pid) / "fd" / str(number)).symlink_to(target)
    (root / str(pid) / "maps").write_bytes(maps.encode() if isinstance(maps, str) else maps)


def test_exactly_what_crius_cannot_dump_is_found(tmp_path: Path) -> None:
    fake_process(
        tmp_path,
        4711,
        {
            0: "/dev/null",
            1: "pipe:[123]",
            2: "/home/u/data",
            3: "/dev/infiniband/uverbs0",
            4: "socket:[456]",
            10: "anon_inode:[perf_event]",  # after 3, not after 1: descriptors in numeric order
            11: "anon_inode:[eventfd]",
            12: "/dev/infiniband/uverbs0",  # the same device twice: once
        },
        MAPS,
    )
    assert undumpable([4711], proc_root=str(tmp_path)) == [
        Holding(4711, "/dev/infiniband/uverbs0", "RDMA/InfiniBand verbs", "fd"),
        Holding(4711, "anon_inode:[perf_event]", "perf events (hardware counters)", "fd"),
        Holding(4711, "/dev/nvidia0", "NVIDIA GPU", "map"),
        Holding(4711, "/dev/kfd (deleted)", "AMD GPU (KFD)", "map"),
    ]


def test_processes_in_the_order_given_and_the_gone_ones_skipped(tmp_path: Path) -> None:
    fake_process(tmp_path, 20, {5: "/dev/xpmem"})
    fake_process(tmp_path, 10, {}, "7f00-7f01 rw-s 00000000 00:05 1 /dev/cxi0\n")
    (tmp_path / "30").mkdir()  # ended between listing and reading: no fd/, no maps
    found = undumpable([30, 20, 999, 10, 0, -1], proc_root=str(tmp_path))
    assert [(h.pid, h.path, h.via) for h in found] == [(20, "/dev/xpmem", "fd"), (10, "/dev/cxi0", "map")]


def test_nothing_found_is_an_empty_list_and_no_refusal(tmp_path: Path) -> None:
    fake_process(
        tmp_path,
        7,
        {0: "/dev/null", 1: "/dev/pts/0", 2: "anon_inode:[timerfd]"},
        MAPS.partition("/dev/nvidia0")[0],
    )
    assert undumpable([7], proc_root=str(tmp_path)) == []
    assert refusal([]) is None


def test_a_line_longer_than_the_limit_is_skipped_whole_and_the_next_one_read(tmp_path: Path) -> None:
    # the rest of an over-long line holds what looks like a maps line: it must not be read as one
    long_line = b"7f00-7f01 r--p 0 08:01 5 /home/u/" + b"a" * devices.MAX_LINE + b" 1 2 3 4 /dev/nvidia0\n"
    fake_process(tmp_path, 8, {}, long_line + b"7f02-7f03 rw-s 0 00:05 6 /dev/fuse\n")
    assert [h.path for h in undumpable([8], proc_root=str(tmp_path))] == ["/dev/fuse"]


def test_at_most_max_entries_descriptors_and_maps_lines_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices, "MAX_ENTRIES", 4)
    maps = "".join(f"7f{i:02x}-7f{i + 1:02x} rw-s 0 00:05 {i} /home/u/f{i}\n" for i in range(6))
    fake_process(
        tmp_path, 9, {i: f"/dev/nvidia{i}" for i in range(10)}, maps + "7f99-7f9a rw-s 0 00:05 9 /dev/kfd\n"
    )
    found = undumpable([9], proc_root=str(tmp_path))
    assert len([h for h in found if h.via == "fd"]) == 4
    assert [h for h in found if h.via == "map"] == []  # /dev/kfd is on the 7th line


def test_undecodable_and_hostile_names_come_back_as_the_kernel_shows_them(tmp_path: Path) -> None:
    fake_process(tmp_path, 12, {}, b"7f00-7f01 rw-s 0 00:05 1 /dev/accel/accel\xff0\n")
    (found,) = undumpable([12], proc_root=str(tmp_path))
    assert found.kind == "compute accelerator"
    assert os.fsencode(found.path) == b"/dev/accel/accel\xff0"


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/dev/infiniband/rdma_cm", devices.RDMA),
        ("/dev/infiniband/umad0", devices.RDMA),
        ("/dev/nvidiactl", devices.NVIDIA),
        ("/dev/nvidia-uvm", devices.NVIDIA),
        ("/dev/nvidia-caps/nvidia-cap1", devices.NVIDIA),
        ("/dev/kfd", devices.AMD_KFD),
        ("/dev/dri/renderD128", devices.DRM),
        ("/dev/dri/card0", devices.DRM),
        ("/dev/hfi1_0", devices.OMNI_PATH),
        ("/dev/cxi0", devices.SLINGSHOT),
        ("/dev/accel/accel0", devices.ACCEL),
        ("/dev/fuse", devices.FUSE),
        ("/dev/xpmem", devices.XPMEM),
        ("anon_inode:[io_uring]", devices.IO_URING),
        ("anon_inode:[userfaultfd]", devices.USERFAULTFD),
        ("/dev/kfdx", None),
        ("/dev/fuse2", None),
        ("/dev/dri/by-path", None),
        ("/dev/null", None),
        ("/dev/zero (deleted)", None),
        ("/dev/shm/ucx-segment", None),
        ("anon_inode:[eventpoll]", None),
        ("anon_inode:inotify", None),
        ("/home/u/dev/infiniband/uverbs0", None),
        ("memfd:cuda (deleted)", None),
    ],
)
def test_kinds(path: str, kind: str | None) -> None:
    assert kind_of(path) == kind


# -- real processes -----------------------------------------------------------------------------------


def test_this_process_holding_dev_null_is_not_refused() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        assert os.readlink(f"/proc/{os.getpid()}/fd/{fd}") == "/dev/null"
        assert undumpable([os.getpid()]) == []
    finally:
        os.close(fd)


def test_another_process_holding_dev_fuse_is_found() -> None:
    try:
        fuse = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        pytest.skip(f"/dev/fuse cannot be opened here: {exc.strerror}")
    child = subprocess.Popen(["sleep", "30"], stdin=fuse)
    os.close(fuse)
    try:
        assert undumpable([child.pid]) == [Holding(child.pid, "/dev/fuse", devices.FUSE, "fd")]
    finally:
        child.kill()
        child.wait()


SYSCALLS = {
    "x86_64": {"userfaultfd": 323, "io_uring_setup": 425},
    "aarch64": {"userfaultfd": 282, "io_uring_setup": 425},
}


@pytest.fixture
def anon_fds() -> Iterator[dict[str, int]]:
    """A real userfaultfd and io_uring of this process, where the kernel lets it make them."""
    numbers = SYSCALLS.get(platform.machine())
    if numbers is None:
        pytest.skip(f"syscall numbers not known for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    params = (ctypes.c_char * 120)()
    made = {
        "anon_inode:[userfaultfd]": libc.syscall(numbers["userfaultfd"], 0),
        "anon_inode:[io_uring]": libc.syscall(numbers["io_uring_setup"], 4, params),
    }
    made = {name: fd for name, fd in made.items() if fd >= 0}
    if not made:
        pytest.skip("neither userfaultfd nor io_uring may be made here")
    yield made
    for fd in made.values():
        os.close(fd)


def test_real_anon_inode_descriptors_are_named_as_the_kernel_names_them(anon_fds: dict[str, int]) -> None:
    found = {(h.path, h.via) for h in undumpable([os.getpid()])}
    assert found >= {(name, "fd") for name in anon_fds}
    for name, fd in anon_fds.items():
        assert os.readlink(f"/proc/self/fd/{fd}") == name


# -- the refusal line ---------------------------------------------------------------------------------


def test_the_refusal_names_the_first_kind_and_path_and_the_way_out() -> None:
    holdings = [Holding(4711, "/dev/infiniband/uverbs0", devices.RDMA, "fd")]
    assert refusal(holdings) == (
        "the job holds /dev/infiniband/uverbs0 (RDMA/InfiniBand verbs), which CRIU cannot checkpoint: "
        "use the application's own (or MPI-level) checkpointing for this job"
    )
    more = [*holdings, Holding(4711, "/dev/infiniband/rdma_cm", devices.RDMA, "fd")]
    more += [Holding(4712, "/dev/infiniband/uverbs0", devices.RDMA, "map")]  # the same path again
    assert "(RDMA/InfiniBand verbs; 1 more such)" in (refusal(more) or "")


def test_the_refusal_is_bounded_whatever_it_holds() -> None:
    longest = max((devices.PERF, devices.RDMA, devices.SLINGSHOT), key=len)
    holdings = [Holding(1, "/dev/accel/" + "x" * 5000, longest, "fd")]
    holdings += [Holding(1, f"/dev/nvidia{i}", devices.NVIDIA, "map") for i in range(100_000)]
    line = refusal(holdings)
    assert line is not None and len(line) <= 199
    assert line.startswith("the job holds /dev/accel/xxx") and "... (perf events" in line
    assert "; 100000 more such), which CRIU cannot checkpoint: use the application's own" in line


def test_a_hostile_path_cannot_break_the_line() -> None:
    hostile = "/dev/nvidia0\nComment: checkpointed fine \x1b[2J\u202e\udcff"
    line = refusal([Holding(1, hostile, devices.NVIDIA, "map")])
    assert line is not None and len(line) <= 199
    assert line.isascii() and line.isprintable()
    assert "'/dev/nvidia0\\nComment: checkpointed fine \\x1b[2J\\u202e\\udcff'" in line

"""What a job holds that CRIU cannot checkpoint, found before the dump: the targets of its descriptors
(``/proc/PID/fd/*``, read with readlink: nothing followed, nothing opened) and the paths of its mappings
(``/proc/PID/maps``), matched by name against the devices and file kinds an HPC job commonly holds.

Each kind here is one CRIU (criu/files.c, criu/files-ext.c, criu/proc_parse.c) refuses to dump:

- a character device descriptor: ``dump_chrdev`` takes only MEM_MAJOR (/dev/null, /dev/zero,
  /dev/urandom...), on MISC_MAJOR only TUN_MINOR and AUTOFS_MINOR (``get_misc_dev_ops``), and ttys;
  every other one goes to ``dump_unsupp_fd`` (files-ext.c), which fails with "Can't dump file N of that
  type" unless a plugin claims it. So the GPU, RDMA and fabric devices, and the misc devices /dev/fuse
  (FUSE_MINOR 229) and /dev/xpmem (the xpmem module's own ``misc_register``) are refused.
- a mapping of one: ``handle_vma`` (proc_parse.c) accepts a regular file or /dev/zero and fails with
  "Can't handle non-regular mapping" otherwise; criu#267 is that error for an RDMA program's
  /dev/infiniband/uverbs mapping.
- an anon_inode descriptor: ``dump_one_file`` knows eventfd, eventpoll, inotify, fanotify, signalfd,
  timerfd, pidfd and (built with libbpf) bpf-map; any other goes to ``dump_unsupp_fd``. Of those an
  HPC job commonly holds: ``[perf_event]`` (PAPI, perf, profilers), ``[io_uring]`` (criu#2131 and
  #2673 fail on its ring mapping, and criu#3070: "No, it is not supported") and ``[userfaultfd]``
  (criu#2021: "Can't dump file 3 of that type [600] (anon anon_inode:[userfaultfd])").

Left out for want of evidence in CRIU's or the driver's source: KNEM (/dev/knem), Cray Aries
(/dev/kgni*), vfio, dma-buf. CRIU 4's ``cuda`` and ``amdgpu`` plugins (plugins/cuda, plugins/amdgpu)
can dump some NVIDIA jobs and ROCm jobs (/dev/kfd and AMD render nodes); this project loads no CRIU
plugin, so those are refused here too (a site that loads one can drop its holdings by ``kind``).

Matching is by the name the kernel shows the process: a device reached under another name (a bind
mount in a container, a node made elsewhere) is not recognised here, and CRIU then fails the dump
itself, as it did before this check.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import msgspec

from mom_checkpoint.platform.errors import shown

MAX_ENTRIES = 65536  # descriptors, and maps lines, read per process: never more
MAX_LINE = 8192  # bytes of one maps line read at a time (the kernel prints at most PATH_MAX of a path)
MAX_REFUSAL = 199  # characters of the refusal line (the job's comment)
DELETED = " (deleted)"  # what the kernel appends to a path that has no name left

RDMA = "RDMA/InfiniBand verbs"
NVIDIA = "NVIDIA GPU"
AMD_KFD = "AMD GPU (KFD)"
DRM = "GPU (DRM)"
OMNI_PATH = "Omni-Path (hfi1)"
SLINGSHOT = "HPE Slingshot (cxi)"
ACCEL = "compute accelerator"
FUSE = "FUSE file system"
XPMEM = "XPMEM shared memory"
PERF = "perf events (hardware counters)"
IO_URING = "io_uring"
USERFAULTFD = "userfaultfd"

# (name, kind): a name ending in "/" or "*" matches every path it begins, any other only itself
_KINDS: tuple[tuple[str, str], ...] = (
    ("/dev/infiniband/", RDMA),  # uverbsN, rdma_cm, umadN, issmN
    ("/dev/nvidia*", NVIDIA),  # nvidiaN, nvidiactl, nvidia-uvm, nvidia-uvm-tools, nvidia-caps/...
    ("/dev/kfd", AMD_KFD),
    ("/dev/dri/renderD*", DRM),
    ("/dev/dri/card*", DRM),
    ("/dev/hfi1*", OMNI_PATH),  # hfi1, hfi1_N
    ("/dev/cxi*", SLINGSHOT),
    ("/dev/accel/", ACCEL),
    ("/dev/fuse", FUSE),
    ("/dev/xpmem", XPMEM),
    ("anon_inode:[perf_event]", PERF),
    ("anon_inode:[io_uring]", IO_URING),
    ("anon_inode:[userfaultfd]", USERFAULTFD),
)
WAY_OUT = "use the application's own (or MPI-level) checkpointing for this job"


Via = Literal["fd", "map"]


class Holding(msgspec.Struct, frozen=True):
    """One descriptor or mapping of a job's process that CRIU cannot dump."""

    pid: int
    path: str  # as the kernel shows it: "/dev/infiniband/uverbs0", "anon_inode:[perf_event]"
    kind: str  # what it is, for people: "RDMA/InfiniBand verbs"
    via: Via


def kind_of(path: str) -> str | None:
    """What CRIU-refused device or file kind ``path`` (a descriptor's target or a mapping's path)
    names, or None."""
    name = path.removesuffix(DELETED)
    for pattern, kind in _KINDS:
        if pattern.endswith(("/", "*")):
            if name.startswith(pattern.rstrip("*")):
                return kind
        elif name == pattern:
            return kind
    return None


def undumpable(pids: Sequence[int], proc_root: str = "/proc") -> list[Holding]:
    """Every descriptor and mapping of the processes ``pids`` that CRIU cannot dump, in the order of
    ``pids``, each process's descriptors (by number) before its mappings; one entry per process, path
    and way (a device mapped a hundred times is one). A process that has ended, or whose /proc entries
    cannot be read, is skipped: the caller checks the tree itself."""
    found: dict[tuple[int, str, str], Holding] = {}
    for pid in pids:
        if pid <= 0:
            continue
        sources: tuple[tuple[Via, Iterable[str]], ...] = (
            ("fd", _fd_targets(f"{proc_root}/{pid}/fd")),
            ("map", _mapped_paths(f"{proc_root}/{pid}/maps")),
        )
        for via, paths in sources:
            for path in paths:
                kind = kind_of(path)
                if kind is not None:
                    found.setdefault((pid, path, via), Holding(pid, path, kind, via))
    return list(found.values())


def _fd_targets(fd_dir: str) -> list[str]:
    """The targets of at most MAX_ENTRIES descriptors in ``fd_dir``, by descriptor number; readlink
    only (the targets are the user's paths: never followed or opened)."""
    try:
        dir_fd = os.open(fd_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []
    numbers: list[int] = []
    targets: list[str] = []
    try:
        with contextlib.suppress(OSError), os.scandir(dir_fd) as listing:
            for entry in listing:
                if entry.name.isdigit():
                    numbers.append(int(entry.name))
                    if len(numbers) >= MAX_ENTRIES:
                        break
        for number in sorted(numbers):
            with contextlib.suppress(OSError):  # closed meanwhile
                targets.append(os.readlink(str(number), dir_fd=dir_fd))
    finally:
        os.close(dir_fd)
    return targets


def _mapped_paths(maps: str) -> Iterator[str]:
    """The path column of at most MAX_ENTRIES lines of a maps file, read a line at a time (at most
    MAX_LINE bytes each; the rest of a longer line is skipped, counted against the limit)."""
    try:
        fd = os.open(maps, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    with os.fdopen(fd, "rb") as fh:
        continued = False
        for _ in range(MAX_ENTRIES):
            try:
                chunk = fh.readline(MAX_LINE)
            except OSError:  # the process ended while it was read
                return
            if not chunk:
                return
            starts_line, continued = not continued, not chunk.endswith(b"\n")
            if not starts_line:
                continue
            # address perms offset dev inode [path]: the path is the rest, spaces and all
            fields = chunk.rstrip(b"\n").split(maxsplit=5)
            if len(fields) == 6:
                yield os.fsdecode(fields[5])


def refusal(holdings: Sequence[Holding]) -> str | None:
    """One line for the job's comment: the first holding's path and kind and the way out (None for
    none). At most MAX_REFUSAL characters, printable ASCII: a path with anything else is quoted with
    its characters escaped, so no path can break the line or the comment."""
    if not holdings:
        return None
    first = holdings[0]
    others = len({h.path for h in holdings} - {first.path})
    more = f"; {others} more such" if others else ""
    rest = f" ({first.kind}{more}), which CRIU cannot checkpoint: {WAY_OUT}"
    lead = "the job holds "
    return lead + shown(first.path, MAX_REFUSAL - len(lead) - len(rest)) + rest

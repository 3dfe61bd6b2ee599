"""Files a job holds that its restore needs but may not find again: kept with the generation, root's.

- **held**: small regular files the job reads (open read-only): above all the job script, which the
  job shell keeps open (bash on fd 255, dash on fd 10) and pbs_mom deletes when the job ends, so an
  image of an ordinary job script could never be restored after its job was gone. They are copied
  before the dump, through the process's own descriptor (/proc/PID/fd/N: the very file it holds,
  whatever its path names now), with the offset the job is at; a restore hands the copy back at that
  offset with CRIU's --inherit-fd.
- **output**: where the job's stdout and stderr go, at a SIGNAL 15 (qhold) checkpoint: pbs_mom
  re-creates them empty before the restart, so what the job printed before the hold would be lost.
  Copied after the dump (the job has ended then) with the owner's rights, put back into the
  re-created file before the restored job writes on.

Bounded: held files up to HELD_MAX each and HELD_FILES at most; output up to OUTPUT_MAX each (the end
of a larger one, said in the log).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mom_checkpoint.discovery import ProcessRecord
from mom_checkpoint.identity import JobUser
from mom_checkpoint.manifest import KEPT
from mom_checkpoint.storage import write_private

HELD_MAX = 1 << 20
HELD_FILES = 64
OUTPUT_MAX = 64 << 20
_SYSTEM = ("/dev/", "/proc/", "/sys/")


@dataclass(frozen=True)
class Copy:
    """A file copied into the generation's kept/ folder (its digest is taken with the image's)."""

    path: str
    copy: str  # "kept/<name>"
    role: str  # "held" or "output"
    pos: int
    cut: int = 0  # bytes of the original left out (the start of an output larger than OUTPUT_MAX)


def keep_held(processes: Sequence[ProcessRecord], generation: Path) -> list[Copy]:
    """Copy the small files the job reads into ``generation``/kept, through each holder's own
    descriptor. A path held at two different offsets is not kept (one copy cannot be at both)."""
    holders: dict[str, list[tuple[int, int]]] = {}
    for process in processes:
        for open_file in process.fds:
            flags = open_file.flags if open_file.flags is not None else os.O_WRONLY
            if open_file.kind != "file" or flags & os.O_ACCMODE != os.O_RDONLY or _skipped(open_file.target):
                continue
            holders.setdefault(open_file.target, []).append((process.pid, open_file.fd))
    copies: list[Copy] = []
    for path, held in sorted(holders.items()):
        if len(copies) >= HELD_FILES:
            break
        positions = {_position(pid, fd) for pid, fd in held}
        if len(positions) != 1 or None in positions:
            continue
        pid, fd = held[0]
        data = _read_held(pid, fd)
        if data is None:
            continue
        name = f"held-{len(copies)}"
        _write(generation, name, data)
        copies.append(Copy(path, f"{KEPT}/{name}", "held", positions.pop() or 0))
    return copies


def keep_outputs(processes: Sequence[ProcessRecord], generation: Path, user: JobUser) -> list[Copy]:
    """Copy the files behind the job's stdout and stderr (regular files it writes), with the owner's
    rights: at most OUTPUT_MAX each, the end of a larger one."""
    from mom_checkpoint.access import acting_as

    paths = sorted(
        {
            fd.target
            for process in processes
            for fd in process.fds
            if fd.fd in (1, 2) and fd.kind == "file" and fd.flags is not None
            and fd.flags & (os.O_WRONLY | os.O_RDWR) and not _skipped(fd.target)
        }
    )  # fmt: skip
    copies: list[Copy] = []
    for path in paths:
        with acting_as(user):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError:
                continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            start = max(0, st.st_size - OUTPUT_MAX)
            data = _pread_all(fd, st.st_size - start, start)
        finally:
            os.close(fd)
        name = f"output-{len(copies)}"
        _write(generation, name, data)
        copies.append(Copy(path, f"{KEPT}/{name}", "output", 0, cut=start))
    return copies


def _skipped(path: str) -> bool:
    return not path.startswith("/") or path.startswith(_SYSTEM) or path.endswith(" (deleted)")


def _position(pid: int, fd: int) -> int | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key == "pos":
                    return int(value.strip())
    except (OSError, ValueError):
        pass
    return None


def _read_held(pid: int, fd: int) -> bytes | None:
    """The whole file the process holds as fd, if it is a regular file of at most HELD_MAX bytes."""
    try:
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(own)
        if not stat.S_ISREG(st.st_mode) or st.st_size > HELD_MAX:
            return None
        return _pread_all(own, st.st_size, 0)
    except OSError:
        return None
    finally:
        os.close(own)


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = os.pread(fd, min(1 << 20, size - len(data)), offset + len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _write(generation: Path, name: str, data: bytes) -> None:
    folder = generation / KEPT
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    write_private(folder / name, data)

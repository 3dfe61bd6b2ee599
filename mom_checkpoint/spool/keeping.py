"""Files a job holds that its restore needs but may not find again: kept with the generation, root's.

- **held**: small regular files the job reads (open read-only): above all the job script, which the
  job shell keeps open (bash on fd 255, dash on fd 10) and pbs_mom deletes when the job ends, so an
  image of an ordinary job script could never be restored after its job was gone. They are copied
  before the dump, through the process's own descriptor (/proc/PID/fd/N: the very file it holds,
  whatever its path names now), with the offset the job is at. The dump names each as CRIU's external
  file (``file[mnt_id:inode]``), so CRIU records neither its path nor its contents, and a restore hands
  the copy back with --inherit-fd under that name. A file the job holds that is already unlinked (the
  copy a restore handed back, at the next checkpoint) is kept the same way: otherwise CRIU would dump
  it as a ghost file and re-create it at restore in a folder that is gone or root's.
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
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from mom_checkpoint.image.layout import KEPT
from mom_checkpoint.platform.files import read_at, write_private
from mom_checkpoint.processes.access import acting_as
from mom_checkpoint.processes.discovery import ProcessRecord
from mom_checkpoint.processes.identity import JobUser
from mom_checkpoint.processes.procfs import fdinfo

HELD_MAX = 1 << 20
HELD_FILES = 64
OUTPUT_MAX = 64 << 20
HELD_CANDIDATES = 4096  # descriptors looked at, at most
_SYSTEM = ("/dev/", "/proc/", "/sys/")


class Copy(msgspec.Struct, frozen=True):
    """A file copied into the generation's kept/ folder (its digest is taken with the image's)."""

    path: str
    copy: str  # "kept/<name>"
    role: str  # "held" or "output"
    pos: int
    cut: int = 0  # bytes of the original left out (the start of an output larger than OUTPUT_MAX)
    external: str = ""  # held: CRIU's name for it at the dump, "file[<mnt_id>:<inode>]" (hex)
    mode: int = 0  # held: the original's permission bits (CRIU checks the file it gets has them)


def keep_held(
    processes: Sequence[ProcessRecord], generation: Path, user: JobUser, *, deadline: float | None = None
) -> list[Copy]:
    """Copy the small files the job reads into ``generation``/kept, through each holder's own
    descriptor, opened with the owner's rights (root never reads for a user what the user could not
    open: an O_PATH descriptor of a root-only file, a process that has since become setuid): one copy
    per file however many descriptors hold it, named as the dump will name it. A file the job also
    writes (another descriptor, a shared writable mapping) is not kept: the dump would name its
    writers external too, and they would write into the copy. At most HELD_CANDIDATES descriptors
    are looked at, and nothing after ``deadline``."""
    copies: list[Copy] = []
    seen: set[str] = set()
    written = _written_inodes(processes, deadline)
    examined = 0
    for process in processes:
        for open_file in process.fds:
            flags = open_file.flags if open_file.flags is not None else os.O_WRONLY
            if (
                open_file.kind != "file"
                or flags & os.O_ACCMODE != os.O_RDONLY
                or flags & os.O_PATH
                or _skipped(open_file.target)
                or open_file.target.startswith("/memfd:")  # CRIU dumps memfds itself
            ):
                continue
            if len(copies) >= HELD_FILES or examined >= HELD_CANDIDATES or _past(deadline):
                return copies
            examined += 1
            info = fdinfo(process.pid, open_file.fd)
            if "pos" not in info or "mnt_id" not in info or "flags" not in info or info["flags"] & os.O_PATH:
                continue
            held = _read_held(process.pid, open_file.fd, user, info, seen=seen, written=written)
            if held is None:
                continue
            seen.add(held.external)
            name = f"held-{len(copies)}"
            _write(generation, name, held.data)
            copies.append(
                Copy(
                    open_file.target,
                    f"{KEPT}/{name}",
                    "held",
                    info["pos"],
                    external=held.external,
                    mode=held.mode,
                )
            )
    return copies


def keep_outputs(processes: Sequence[ProcessRecord], generation: Path, user: JobUser) -> list[Copy]:
    """Copy the files behind the job's stdout and stderr (regular files it writes), with the owner's
    rights: at most OUTPUT_MAX each, the end of a larger one."""
    paths = sorted(
        {
            fd.target
            for process in processes
            for fd in process.fds
            if fd.fd in (1, 2) and fd.kind == "file" and fd.flags is not None
            and fd.flags & (os.O_WRONLY | os.O_RDWR) and not _skipped(fd.target)
            and not fd.target.endswith(" (deleted)")
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
            data = read_at(fd, st.st_size - start, start)
        finally:
            os.close(fd)
        name = f"output-{len(copies)}"
        _write(generation, name, data)
        copies.append(Copy(path, f"{KEPT}/{name}", "output", 0, cut=start))
    return copies


def _skipped(path: str) -> bool:
    return not path.startswith("/") or path.startswith(_SYSTEM)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


class _Held(msgspec.Struct, frozen=True):
    data: bytes
    mode: int
    external: str


def _written_inodes(processes: Sequence[ProcessRecord], deadline: float | None) -> set[int]:
    """Inode numbers of every file the tree holds open for writing or maps shared and writable. By
    number alone (no stat: nothing here waits on a file system): a match on another file system
    only means a file is not kept, and CRIU dumps it as before."""
    found: set[int] = set()
    for process in processes:
        for open_file in process.fds:
            if open_file.kind == "file" and (open_file.flags is None or open_file.flags & os.O_ACCMODE):
                info = fdinfo(process.pid, open_file.fd)
                if "ino" in info:
                    found.add(info["ino"])
                else:
                    with contextlib.suppress(OSError):
                        found.add(os.stat(f"/proc/{process.pid}/fd/{open_file.fd}").st_ino)
        with contextlib.suppress(OSError), open(f"/proc/{process.pid}/maps", "rb") as maps:
            for number, line in enumerate(maps):
                if number % 4096 == 0 and _past(deadline):
                    break
                fields = line.split(maxsplit=5)
                if (
                    len(fields) >= 5
                    and fields[1][1:2] == b"w"
                    and fields[1][3:4] == b"s"
                    and fields[4].isdigit()
                ):
                    found.add(int(fields[4]))
    return found


def _read_held(
    pid: int, fd: int, user: JobUser, info: dict[str, int], *, seen: set[str], written: set[int]
) -> _Held | None:
    """The whole file the process holds as fd, opened with ``user``'s rights, if it is a regular file
    of at most HELD_MAX bytes that its owner may read and that is not set-id (the copy handed back
    has the same bits, the owner's), not one kept already (``seen``) and not written by the job,
    with CRIU's name for it under --external: "file[<mnt_id>:<inode>]" in hex (criu/files-reg.c,
    dump_one_reg_file). Its identity is taken before a byte is read."""
    try:
        with acting_as(user):
            handle = os.open(f"/proc/{pid}/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(handle)
        mode = stat.S_IMODE(st.st_mode)
        external = f"file[{info['mnt_id']:x}:{st.st_ino:x}]"
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_size > HELD_MAX
            or mode & 0o7000
            or not mode & stat.S_IRUSR
            or info.get("ino", st.st_ino) != st.st_ino  # the descriptor changed since fdinfo was read
            or external in seen
            or st.st_ino in written
        ):
            return None
        with acting_as(user):
            own = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        os.close(handle)
    try:
        return _Held(read_at(own, st.st_size), mode, external)
    except OSError:
        return None
    finally:
        os.close(own)


def _write(generation: Path, name: str, data: bytes) -> None:
    folder = generation / KEPT
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    write_private(folder / name, data)

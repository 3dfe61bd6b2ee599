"""What a restored process holds that its owner could not have opened themselves.

Root's CRIU (``run_as = "root"``) reopens the files a job had open, its working and root folder, its
executable and its mapped files by their paths, and checks little more than their sizes. Those paths
are the user's to change: a file of the job swapped for a link to a root-only file of the same size
before a restart would have root open that file for the job. So before a restored tree runs, every
one of them is looked up again by its path **with the owner's rights** and must be the very same file
(device and inode), and the owner must have, on that file, the access the process has to it:

- a descriptor: read and/or write as it was opened (an ``O_PATH`` one: only that the owner reaches
  the file, which is all ``O_PATH`` itself asks);
- a mapping, executable ones included: read (a mapping is memory the process can read, whatever
  the kernel lets ``execve`` map without read permission), and write too for a shared writable one;
- the working and root folder: search; the executable: execute.

The access is asked of the kernel on the very inode the process holds, taken by root from the
process's own ``/proc`` link (``/proc/PID/fd/N``, ``map_files``, ``cwd``...) with ``O_PATH`` (no
permission is taken from it), through ``faccessat`` on ``/proc/self/fd/N`` with the owner's effective
ids: for every kind of file (regular files, folders, FIFOs and devices alike; the last two are never
opened for real: opening either can act), and for files that have no name any more too (a file of
root's swapped in by path and then made deleted, by a rename over it, is still root's file). The
lookup by path with the owner's rights is the second condition, for files that still have a name.
Files of the kernel's pseudo file systems (proc, sysfs...) carry their protection in their open
function, not in their mode bits (``/proc/PID/maps`` of a root process is 0444): the process may hold
only its own tree's ``/proc/PID`` entries. Anything else is a problem, and the tree is killed before
it runs. In job-user mode CRIU itself opened them with the owner's rights: nothing to check.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import msgspec

from mom_checkpoint.processes.identity import JobUser
from mom_checkpoint.processes.procfs import fdinfo

O_PATH = getattr(os, "O_PATH", 0o10000000)
REACH = 0  # no access asked beyond reaching the file by its path

_VERBS = ((os.R_OK, "read"), (os.W_OK, "write"), (os.X_OK, "execute"))


# file systems whose files are protected when they are opened, not by their mode bits
PSEUDO_FILE_SYSTEMS = frozenset({"proc", "sysfs", "debugfs", "tracefs", "securityfs", "configfs", "bpf"})


class Held(msgspec.Struct, frozen=True):
    """One file a process holds: its path, the access the process has to it, which file it must be,
    and the process's own /proc link to it."""

    pid: int
    what: str  # "fd 3", "working folder", "a mapping", ...
    path: str
    access: int  # os.R_OK | os.W_OK | os.X_OK, or REACH
    device: int
    inode: int
    link: str  # /proc/PID/fd/N, /proc/PID/map_files/RANGE, /proc/PID/cwd, ...
    deleted: bool = False


def problems(pids: list[int], user: JobUser) -> list[str]:
    """Every file the processes hold that ``user`` could not hold so: without the access the process
    has to it, not reachable by its path with their rights, another file there now, or a file of a
    pseudo file system that is not the tree's own."""
    held = [item for pid in pids for item in _held(pid)]
    mounts = _pseudo_mounts()
    found = []
    for item in held:
        problem = _problem(item, user, pids, mounts)
        if problem is not None:
            found.append(problem)
    return found


@contextlib.contextmanager
def acting_as(user: JobUser) -> Iterator[None]:
    """Root acts with the owner's rights (effective and filesystem ids, groups) for a while; a root
    owner, or a program not running as root, acts as itself."""
    if os.geteuid() != 0 or user.uid == 0:
        yield
        return
    groups = os.getgroups()
    os.setgroups(list(user.groups))
    os.setegid(user.gid)
    os.seteuid(user.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


def _problem(item: Held, user: JobUser, pids: list[int], mounts: frozenset[int]) -> str | None:
    where = f"process {item.pid} holds {item.path} ({item.what})"
    try:  # the very inode the process holds, as root, naming it only
        held = os.open(item.link, O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        return f"{where}, which cannot be looked at: {exc.strerror}"
    try:
        st = os.fstat(held)
        if (st.st_dev, st.st_ino) != (item.device, item.inode):
            return f"{where}, but it changed while it was looked at"
        if _mount_id(held) in mounts and not any(item.path.startswith(f"/proc/{pid}/") for pid in pids):
            return f"{where}, a file of the kernel's that another process's rights protect"
        with acting_as(user):
            missing = [verb for bit, verb in _VERBS if item.access & bit and not _allowed(held, bit)]
            by_path = None if item.deleted else _by_path(item, user)
    finally:
        os.close(held)
    if missing:
        return f"{where}, which {user.name} cannot {' or '.join(missing)}"
    if by_path is not None:
        return f"{where}, {by_path}"
    return None


def _by_path(item: Held, user: JobUser) -> str | None:
    """As the owner: the path still leads to the very file (they could have opened it themselves)."""
    try:
        fd = os.open(item.path, O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        return f"which {user.name} cannot open: {exc.strerror}"
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if (st.st_dev, st.st_ino) != (item.device, item.inode):
        return "but that path is another file now"
    return None


def _mount_id(fd: int) -> int:
    return fdinfo("self", fd).get("mnt_id", -1)


def _pseudo_mounts() -> frozenset[int]:
    """Mount ids (this process's view) of the pseudo file systems."""
    found = set()
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                if " - " in line:
                    fstype = line.split(" - ", 1)[1].split()[0]
                    if fstype in PSEUDO_FILE_SYSTEMS:
                        found.add(int(fields[0]))
    except (OSError, ValueError, IndexError):
        pass
    return frozenset(found)


def _allowed(fd: int, bit: int) -> bool:
    """The kernel's own permission check, with the effective ids, on the inode ``fd`` names."""
    return os.access(f"/proc/self/fd/{fd}", bit, effective_ids=True)


def _held(pid: int) -> list[Held]:
    found = []
    base = f"/proc/{pid}"
    for name, what, access in (
        ("cwd", "working folder", os.X_OK),
        ("root", "root folder", os.X_OK),
        ("exe", "executable", os.X_OK),
    ):
        item = _link(pid, f"{base}/{name}", what, access)
        if item is not None:
            found.append(item)
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"{base}/fd"):
            flags = _fd_flags(pid, fd)
            if flags is None:
                continue
            item = _link(pid, f"{base}/fd/{fd}", f"fd {fd}", _fd_access(flags))
            if item is not None:
                found.append(item)
    found += _mappings(pid)
    return found


def _fd_access(flags: int) -> int:
    if flags & O_PATH:
        return REACH
    mode = flags & os.O_ACCMODE
    if mode == os.O_RDWR:
        return os.R_OK | os.W_OK
    return os.W_OK if mode == os.O_WRONLY else os.R_OK


def _link(pid: int, link: str, what: str, access: int) -> Held | None:
    """A /proc magic link to a file with a path, or that had one: regular files, folders, FIFOs,
    devices and socket files, deleted or not. Pipes, sockets and other anonymous inodes have none
    (CRIU recreates them), so those are left out."""
    try:
        target = os.readlink(link)
        st = os.stat(link)
    except OSError:
        return None
    if not target.startswith("/"):
        return None
    deleted = target.endswith(" (deleted)")
    path = target.removesuffix(" (deleted)") if deleted else target
    return Held(pid, what, path, access, st.st_dev, st.st_ino, link, deleted)


def _fd_flags(pid: int, fd: str) -> int | None:
    return fdinfo(pid, fd).get("flags")


def _mappings(pid: int) -> list[Held]:
    """Mapped files: read for every mapping (executable ones too: the mapped bytes are readable
    memory), read and write for a shared writable one; one item per file (device and inode) and
    access, whatever path text /proc shows for it."""
    found: dict[tuple[int, int, int], Held] = {}
    try:
        with open(f"/proc/{pid}/maps") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/") or int(parts[4]) == 0:
            continue
        perms, path = parts[1], parts[5]
        access = os.R_OK | os.W_OK if "w" in perms and "s" in perms else os.R_OK
        link = f"/proc/{pid}/map_files/{parts[0]}"
        try:  # the file itself, as fstat will see it (some file systems show another device in maps)
            st = os.stat(link)
        except OSError:
            continue  # the range went away meanwhile: nothing is mapped there
        deleted = path.endswith(" (deleted)")
        held = Held(
            pid, "a mapping", path.removesuffix(" (deleted)"), access, st.st_dev, st.st_ino, link, deleted
        )
        found.setdefault((st.st_dev, st.st_ino, access), held)
    return list(found.values())

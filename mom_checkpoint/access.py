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

The lookup only names the file (``O_PATH``: no permission on the file itself is taken from it); the
access is then asked of the kernel on that very inode (``faccessat`` on ``/proc/self/fd/N`` with the
effective ids, which are the owner's), for every kind of file: regular files, folders, FIFOs and
devices alike (the last two are never opened for real: opening either can act). Anything else is a
problem, and the tree is killed before it runs. In job-user mode CRIU itself opened them with the
owner's rights: nothing to check.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from mom_checkpoint.identity import JobUser

O_PATH = getattr(os, "O_PATH", 0o10000000)
REACH = 0  # no access asked beyond reaching the file by its path

_VERBS = ((os.R_OK, "read"), (os.W_OK, "write"), (os.X_OK, "execute"))


@dataclass(frozen=True)
class Held:
    """One file a process holds: its path, the access the process has to it, which file it must be."""

    pid: int
    what: str  # "fd 3", "working folder", "a mapping", ...
    path: str
    access: int  # os.R_OK | os.W_OK | os.X_OK, or REACH
    device: int
    inode: int


def problems(pids: list[int], user: JobUser) -> list[str]:
    """Every file the processes hold that ``user`` could not hold so: not reachable by its path with
    their rights, another file there now, or without the access the process has to it."""
    held = [item for pid in pids for item in _held(pid)]
    found = []
    with acting_as(user):
        for item in held:
            problem = _problem(item, user)
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


def _problem(item: Held, user: JobUser) -> str | None:
    where = f"process {item.pid} holds {item.path} ({item.what})"
    try:
        fd = os.open(item.path, O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        return f"{where}, which {user.name} cannot open: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (item.device, item.inode):
            return f"{where}, but that path is another file now"
        missing = [verb for bit, verb in _VERBS if item.access & bit and not _allowed(fd, bit)]
    finally:
        os.close(fd)
    if missing:
        return f"{where}, which {user.name} cannot {' or '.join(missing)}"
    return None


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
    """A /proc magic link to a file with a path: regular files, folders, FIFOs, devices and socket
    files. Pipes, sockets and other anonymous inodes have none (CRIU recreates them), and deleted
    files come back from the image's own copy, so those are left out."""
    try:
        target = os.readlink(link)
        st = os.stat(link)
    except OSError:
        return None
    if not target.startswith("/") or target.endswith(" (deleted)"):
        return None
    return Held(pid, what, target, access, st.st_dev, st.st_ino)


def _fd_flags(pid: int, fd: str) -> int | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key == "flags":
                    return int(value.strip(), 8)
    except (OSError, ValueError):
        pass
    return None


def _mappings(pid: int) -> list[Held]:
    """Mapped files: read for every mapping (executable ones too: the mapped bytes are readable
    memory), read and write for a shared writable one."""
    found: dict[tuple[str, int], Held] = {}
    try:
        with open(f"/proc/{pid}/maps") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/") or parts[5].endswith(" (deleted)"):
            continue
        perms, device, inode, path = parts[1], parts[3], int(parts[4]), parts[5]
        if inode == 0:
            continue
        access = os.R_OK | os.W_OK if "w" in perms and "s" in perms else os.R_OK
        try:  # the file itself, as fstat will see it (some file systems show another device in maps)
            st = os.stat(f"/proc/{pid}/map_files/{parts[0]}")
            identity = (st.st_dev, st.st_ino)
        except OSError:
            major, minor = (int(part, 16) for part in device.split(":"))
            identity = (os.makedev(major, minor), inode)
        found.setdefault((path, access), Held(pid, "a mapping", path, access, *identity))
    return list(found.values())

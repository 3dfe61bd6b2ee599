"""What a restored process holds that its owner could not have opened themselves.

Root's CRIU (``run_as = "root"``) reopens the files a job had open, its working folder and its mapped
files by their paths, and checks little more than their sizes. Those paths are the user's to change:
a file of the job swapped for a link to a root-only file of the same size before a restart would have
root open that file for the job. So before a restored tree runs, every open file and folder, working
and root folder, executable and mapped file of every process is opened again by its path **with the
owner's rights** and must be the very same file (device and inode): what the owner can reach by path
they could have opened themselves. Anything else is a problem, and the tree is killed before it runs.
(In job-user mode CRIU itself opens them with the owner's rights: nothing to check.)
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from mom_checkpoint.identity import JobUser

O_PATH = getattr(os, "O_PATH", 0o10000000)


@dataclass(frozen=True)
class Held:
    """One file a process holds: what to open, how, and which file it must turn out to be."""

    pid: int
    what: str  # "fd 3", "cwd", "a mapping", ...
    path: str
    flags: int  # open flags that show the owner may hold it so
    device: int
    inode: int


def problems(pids: list[int], user: JobUser) -> list[str]:
    """Every file the processes hold that ``user`` cannot open by its path (as they hold it)."""
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
    try:
        fd = os.open(item.path, item.flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        reason = exc.strerror
        return f"process {item.pid} holds {item.path} ({item.what}), which {user.name} cannot open: {reason}"
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if (st.st_dev, st.st_ino) != (item.device, item.inode):
        return f"process {item.pid} holds {item.path} ({item.what}), but that path is another file now"
    return None


def _held(pid: int) -> list[Held]:
    found = []
    base = f"/proc/{pid}"
    for name, what in (("cwd", "working folder"), ("root", "root folder"), ("exe", "executable")):
        item = _link(pid, f"{base}/{name}", what, O_PATH)
        if item is not None:
            found.append(item)
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"{base}/fd"):
            flags = _fd_flags(pid, fd)
            if flags is None:
                continue
            access = O_PATH if flags & O_PATH else flags & os.O_ACCMODE
            item = _link(pid, f"{base}/fd/{fd}", f"fd {fd}", access)
            if item is not None:
                found.append(item)
    found += _mappings(pid)
    return found


def _link(pid: int, link: str, what: str, flags: int) -> Held | None:
    """A /proc magic link to a regular file or folder (pipes, sockets, devices and deleted files are
    not reopened by path, so they are left out)."""
    try:
        target = os.readlink(link)
        st = os.stat(link)
    except OSError:
        return None
    if not target.startswith("/") or target.endswith(" (deleted)"):
        return None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return None
    if stat.S_ISDIR(st.st_mode) and flags != O_PATH:
        flags = os.O_RDONLY | os.O_DIRECTORY
    return Held(pid, what, target, flags, st.st_dev, st.st_ino)


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
    """Mapped files: read for every mapping, read and write for a shared writable one; an executable
    mapping only has to be reachable (the kernel maps executables without read permission)."""
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
        if "w" in perms and "s" in perms:
            flags = os.O_RDWR
        elif "x" in perms:
            flags = O_PATH
        else:
            flags = os.O_RDONLY
        try:  # the file itself, as fstat will see it (some file systems show another device in maps)
            st = os.stat(f"/proc/{pid}/map_files/{parts[0]}")
            identity = (st.st_dev, st.st_ino)
        except OSError:
            major, minor = (int(part, 16) for part in device.split(":"))
            identity = (os.makedev(major, minor), inode)
        found.setdefault((path, flags), Held(pid, "a mapping", path, flags, *identity))
    return list(found.values())

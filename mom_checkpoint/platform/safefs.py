"""Root's access below folders a user can write: nothing followed, nothing blocking, everything bounded.

In job-user mode the user owns the image folder (their CRIU writes it), and users own their
CHECKPOINT_DIR, their output files and much else that root touches. Whatever is there may have been
swapped a moment ago for a symlink, a FIFO, a sparse file of terabytes or a tree ten thousand folders
deep. So, below such a folder, root

- resolves every path component itself, from an open folder descriptor, with ``O_NOFOLLOW``: a symlink
  anywhere in the path is refused, not followed (a folder renamed or swapped after it was listed
  changes nothing: what is open stays open);
- opens with ``O_NONBLOCK`` and accepts only regular files (``fstat``), so a FIFO never hangs it;
- reads at most a stated number of bytes, walks at most a stated depth and number of entries, and
  removes trees iteratively with a bounded number of open descriptors (no recursion limit to hit).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import msgspec

from mom_checkpoint.platform.errors import Refused, StorageIOError, TimedOut

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NOCTTY: a detached remover or copier leads its own session; a tty node must never become its terminal
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
MAX_DEPTH = 32  # folder levels a walk descends into before it refuses
MAX_ENTRIES = 200_000  # entries a walk lists before it refuses
MAX_OPEN = 64  # folder descriptors a removal keeps open; deeper folders are moved up first
_MOVED = ".deep-"

Kind = Literal["file", "dir", "symlink", "other"]


class UnsafePath(Refused):
    """A symlink, a special file, a path with '..' or a tree beyond the limits, where root looked."""


class TooLarge(StorageIOError):
    """A file or a tree holds more than root is prepared to read."""


class Entry(msgspec.Struct, frozen=True):
    path: str  # relative to the walked folder, "/"-separated
    kind: Kind
    size: int
    uid: int
    mode: int


def open_dir(path: str | Path, *, dir_fd: int | None = None) -> int:
    """A descriptor of a folder: ``path`` relative to ``dir_fd``, each component without following a
    symlink. Without ``dir_fd`` the path is absolute and only its last component is checked: use it
    for folders whose ancestors are root's (the spool)."""
    if dir_fd is None:
        try:
            return os.open(path, DIR_FLAGS)
        except OSError as exc:
            raise _refusal(exc, str(path)) from None
    return _walk_components(dir_fd, _parts(str(path)), DIR_FLAGS)


def open_configured_dir(path: str | Path) -> int:
    """A descriptor of the folder at the absolute ``path`` an admin configured, opened from "/" one
    component at a time. A symlink is followed only where the folder holding it is root's and no one
    else can write it (only root can have made it: /var/run -> /run); anywhere else a symlink, or a
    component that is not a folder, is refused. An account that owns a folder on the way can swap what
    is below it only for what is its own, never for a way into root's folders."""
    text = str(path)
    if not text.startswith("/"):
        raise UnsafePath(f"{text!r} is not an absolute path: refusing")
    pending = [part for part in reversed(text.split("/")) if part not in ("", ".")]
    chain = [os.open("/", DIR_FLAGS)]  # the folders opened so far; ".." steps back along it
    links = 0
    try:
        while pending:
            part = pending.pop()
            if part == "..":
                if len(chain) > 1:
                    os.close(chain.pop())
                continue
            try:
                chain.append(os.open(part, DIR_FLAGS, dir_fd=chain[-1]))
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if not stat.S_ISLNK(os.stat(part, dir_fd=chain[-1], follow_symlinks=False).st_mode):
                    raise UnsafePath(f"{part!r} in {text} is not a folder: refusing") from None
            holder = os.fstat(chain[-1])
            if holder.st_uid != 0 or holder.st_mode & 0o022:
                raise UnsafePath(
                    f"{part!r} in {text} is a symlink in a folder another account can write: refusing to"
                    " follow it"
                )
            links += 1
            if links > 40:
                raise UnsafePath(f"{text} leads through more than 40 symlinks: refusing")
            target = os.readlink(part, dir_fd=chain[-1])
            if target.startswith("/"):
                while len(chain) > 1:
                    os.close(chain.pop())
            pending.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
        return chain.pop()
    finally:
        for fd in chain:
            os.close(fd)


def open_regular(
    path: str | Path, *, dir_fd: int | None = None, max_bytes: int | None = None
) -> tuple[int, os.stat_result]:
    """A blocking read-only descriptor of a regular file below ``dir_fd`` and its ``fstat``: refused
    when any component is a symlink, when it is not a regular file, or when it holds more than
    ``max_bytes``."""
    if dir_fd is None:
        parent, name = os.path.split(str(path))
        dir_fd = open_dir(parent or ".")
        try:
            return open_regular(name, dir_fd=dir_fd, max_bytes=max_bytes)
        finally:
            os.close(dir_fd)
    fd = _walk_components(dir_fd, _parts(str(path)), FILE_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path} is not a regular file: refusing to read it")
        if max_bytes is not None and st.st_size > max_bytes:
            raise TooLarge(f"{path} holds {st.st_size} bytes, more than the {max_bytes} allowed: refusing")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_text(
    path: str | Path, *, dir_fd: int | None = None, limit: int = 64 * 1024, tail: bool = False
) -> str:
    """At most ``limit`` bytes of a regular file (its end with ``tail``), decoded leniently; a file
    that is missing, a symlink or not a regular file reads as nothing."""
    try:
        fd, st = open_regular(path, dir_fd=dir_fd)
    except (OSError, UnsafePath):
        return ""
    try:
        start = max(0, st.st_size - limit) if tail else 0
        return os.pread(fd, limit, start).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def walk(
    dir_fd: int, *, max_depth: int = MAX_DEPTH, max_entries: int = MAX_ENTRIES, deadline: float | None = None
) -> list[Entry]:
    """Every entry below an open folder, parents before children, sorted within each folder: walked
    through descriptors (never a path twice), without recursion, refused beyond the limits. A folder
    is refused while it is listed, as soon as its entries pass ``max_entries`` (with those already
    found): never listed whole and sorted first, so memory and time are bounded by the limit, not by
    what a user put there."""
    found: list[Entry] = []
    stack: list[tuple[int, str, int]] = [(os.dup(dir_fd), "", 0)]
    try:
        while stack:
            fd, prefix, depth = stack.pop()
            try:
                items: list[os.DirEntry[str]] = []
                with os.scandir(fd) as listing:
                    for item in listing:
                        if len(found) + len(items) >= max_entries:
                            raise UnsafePath(f"more than {max_entries} entries below one folder: refusing")
                        items.append(item)
                        if len(items) % 1024 == 0:
                            _check_deadline(deadline, "walking a folder")
                items.sort(key=lambda e: e.name)
                subdirs = []
                for item in items:
                    _check_deadline(deadline, "walking a folder")
                    st = item.stat(follow_symlinks=False)
                    entry = Entry(prefix + item.name, _kind(st.st_mode), st.st_size, st.st_uid, st.st_mode)
                    found.append(entry)
                    if entry.kind == "dir":
                        subdirs.append(item.name)
                if subdirs and depth + 1 > max_depth:
                    raise UnsafePath(f"{prefix}{subdirs[0]} is more than {max_depth} folders deep: refusing")
                for name in reversed(subdirs):
                    stack.append((_walk_components(fd, [name], DIR_FLAGS), f"{prefix}{name}/", depth + 1))
            finally:
                os.close(fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return found


def tree_bytes(path: Path, *, max_entries: int = MAX_ENTRIES) -> int:
    """Bytes in regular files below ``path``, counted without following anything; a tree that cannot
    be walked (or is beyond the limits) counts what was seen before that, never raises."""
    total = 0
    with _opened(path) as fd:
        if fd is None:
            return 0
        stack = [os.dup(fd)]
        seen = 0
        try:
            while stack and seen < max_entries:
                current = stack.pop()
                try:
                    with os.scandir(current) as listing:
                        for item in listing:
                            seen += 1
                            with contextlib.suppress(OSError):
                                st = item.stat(follow_symlinks=False)
                                if stat.S_ISREG(st.st_mode):
                                    total += st.st_size
                                elif stat.S_ISDIR(st.st_mode) and len(stack) < MAX_OPEN:
                                    stack.append(os.open(item.name, DIR_FLAGS, dir_fd=current))
                except OSError:
                    pass
                finally:
                    os.close(current)
        finally:
            for left in stack:
                os.close(left)
    return total


class _Frame(msgspec.Struct):
    fd: int
    name: str  # in the parent frame's folder
    uid: int  # the folder's owner
    names: list[tuple[str, bool]] | None = None  # (name, is a folder), listed on first visit
    rescan: bool = False


def remove_tree(path: Path, *, deadline: float | None = None) -> bool:
    """Remove ``path`` and everything below it, never following a symlink, without recursion and with
    at most MAX_OPEN folders open (a folder deeper than that is first renamed up to ``path`` itself).
    Returns whether everything is gone; with a ``deadline`` (monotonic time) it stops there and
    leaves the rest for a later call. Errors on single entries are skipped, never raised."""
    parent, name = str(path.parent), path.name
    try:
        parent_fd = os.open(parent, DIR_FLAGS)
    except OSError:
        return not os.path.lexists(path)
    try:
        try:
            top_fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=parent_fd)  # a symlink or a file: the link itself goes
            return True
        if not _empty_tree(top_fd, deadline):
            return False
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True
    finally:
        os.close(parent_fd)


def _empty_tree(top_fd: int, deadline: float | None) -> bool:
    """Remove everything inside the open folder ``top_fd`` (which it closes).

    Only folders a user could have emptied themselves are entered: below a user's folder, only that
    user's folders (a user who moves a folder of theirs into an image brings along whatever other
    users keep in it, and root must not delete what they could not); below root's, root's and those
    of the users that owned the top's own folders when the removal began (root's generation folder
    holds the job user's image/). A folder not entered is removed only if it is empty."""
    top_uid = os.fstat(top_fd).st_uid
    frames = [_Frame(top_fd, "", top_uid)]
    allowed = {0, top_uid} | (_folder_owners(top_fd) if top_uid == 0 else set())
    moved = 0
    failures = 0
    try:
        while frames:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            frame = frames[-1]
            if frame.names is None or (not frame.names and frame.rescan):
                frame.rescan = False
                try:
                    with os.scandir(frame.fd) as listing:
                        frame.names = [(e.name, e.is_dir(follow_symlinks=False)) for e in listing]
                except OSError:
                    frame.names = []
                    failures += 1
            descended = False
            while frame.names:
                entry, is_dir = frame.names.pop()
                try:
                    if not is_dir:
                        os.unlink(entry, dir_fd=frame.fd)
                        continue
                    if len(frames) >= MAX_OPEN:
                        if not _may_enter(
                            frame.uid, os.stat(entry, dir_fd=frame.fd, follow_symlinks=False).st_uid, allowed
                        ):
                            os.rmdir(entry, dir_fd=frame.fd)  # another user's: only if empty
                            continue
                        moved += 1
                        target = f"{_MOVED}{moved}-{os.urandom(6).hex()}"
                        os.rename(entry, target, src_dir_fd=frame.fd, dst_dir_fd=top_fd)
                        frames[0].rescan = True
                        continue
                    child = os.open(entry, DIR_FLAGS, dir_fd=frame.fd)
                    child_uid = os.fstat(child).st_uid
                    if not _may_enter(frame.uid, child_uid, allowed):
                        os.close(child)
                        os.rmdir(entry, dir_fd=frame.fd)  # another user's, brought along: only if empty
                        continue
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link or a file meanwhile
                        with contextlib.suppress(OSError):
                            os.unlink(entry, dir_fd=frame.fd)
                            continue
                    failures += 1
                    if failures > 1000:
                        return False
                    continue
                frames.append(_Frame(child, entry, child_uid))
                descended = True
                break
            if descended or (len(frames) == 1 and frame.rescan):
                continue
            if len(frames) == 1:
                return failures == 0
            frames.pop()
            os.close(frame.fd)
            try:
                os.rmdir(frame.name, dir_fd=frames[-1].fd)
            except FileNotFoundError:
                pass
            except OSError:
                failures += 1
                if failures > 1000:
                    return False
        return failures == 0
    finally:
        for frame in frames:
            os.close(frame.fd)


def _may_enter(parent_uid: int, child_uid: int, allowed: set[int]) -> bool:
    """Below a user's folder only that user's; below root's, the owners ``allowed`` (see _empty_tree)."""
    return child_uid == parent_uid if parent_uid != 0 else child_uid in allowed


def _folder_owners(fd: int) -> set[int]:
    """The owners of the folders directly in the open folder ``fd``."""
    owners = set()
    with contextlib.suppress(OSError), os.scandir(fd) as listing:
        for entry in listing:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    owners.add(entry.stat(follow_symlinks=False).st_uid)
    return owners


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[int | None]:
    try:
        fd = os.open(path, DIR_FLAGS)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _parts(path: str) -> list[str]:
    parts = path.split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise UnsafePath(f"{path!r} is not a plain relative path: refusing")
    return parts


def _walk_components(dir_fd: int, parts: list[str], last_flags: int) -> int:
    fd = dir_fd
    try:
        for i, part in enumerate(parts):
            flags = last_flags if i == len(parts) - 1 else DIR_FLAGS
            try:
                next_fd = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                raise _refusal(exc, "/".join(parts[: i + 1])) from None
            if fd != dir_fd:
                os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        if fd != dir_fd:
            os.close(fd)
        raise


def _refusal(exc: OSError, shown: str) -> OSError | UnsafePath:
    if exc.errno == errno.ELOOP:
        return UnsafePath(f"{shown} is a symlink: refusing to follow it")
    if exc.errno == errno.ENOTDIR:
        return UnsafePath(f"{shown} is not a folder (a symlink or a file in its path?): refusing")
    return exc


def describe(dir_fd: int, name: str) -> tuple[Kind, int] | None:
    """What ``name`` in the open folder is, without following it: its kind and its owner's uid
    (None when nothing is there). For naming what was found; it opens and reads nothing."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return _kind(st.st_mode), st.st_uid


RENAME_EXCHANGE = 2  # renameat2(2)'s flag


def exchange(dir_fd: int, first: str, second: str) -> None:
    """Swap two entries of the open folder in one step (renameat2 with RENAME_EXCHANGE): each name
    holds the other's entry afterwards, with no moment at which either name is free for another user
    to take. Raises OSError: ENOENT when either is missing, EINVAL or ENOSYS where the file system or
    the C library cannot do it."""
    import ctypes  # only on this rare path: the hook's start-up stays as it was

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), first) from None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(dir_fd, os.fsencode(first), dir_fd, os.fsencode(second), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), first)


def _kind(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise TimedOut(f"out of time while {what}")

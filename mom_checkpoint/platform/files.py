"""Small files and folders of root's: written whole and private, fsync'd, checked before use, and the
one way an OSError becomes the product's I/O error."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
from pathlib import Path

from mom_checkpoint.platform.errors import DiskFull, Refused, StorageIOError


def write_private(path: Path, data: str | bytes) -> None:
    """Create a small file only its owner can read (never through a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """All of ``data`` written to ``fd`` (os.write may write less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_at(fd: int, size: int, offset: int = 0) -> bytes:
    """Up to ``size`` bytes of ``fd`` from ``offset``: fewer only where the file ends first."""
    parts = []
    done = 0
    while done < size and (data := os.pread(fd, min(size - done, 8 << 20), offset + done)):
        parts.append(data)
        done += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def copy_all(source: int, target: int, chunk: int = 1 << 20) -> None:
    """What ``source`` holds from its offset to its end, written to ``target``."""
    while data := os.read(source, chunk):
        write_all(target, data)


def replace_in(
    dir_fd: int,
    name: str,
    data: bytes,
    *,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
    durable: bool = True,
) -> None:
    """The file ``name`` in the open folder ``dir_fd`` replaced, all at once, by a new file holding
    ``data`` with ``mode`` (and ``owner``). It is written under a name nobody could have guessed
    (``.NAME.<random>.tmp``, which collectors of ``*.prom`` or ``*.json`` skip), created never through
    a link, and renamed over ``name``: whatever was there is replaced, never followed or opened. With
    ``durable``, the file and then the folder are fsync'd. The temporary goes if anything fails."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    for _ in range(8):
        tmp = f".{name[:200]}.{os.urandom(8).hex()}.tmp"
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no new temporary file could be made", name)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the caller's umask made of it
            if owner is not None:
                os.fchown(fd, *owner)
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        if durable:
            os.fsync(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)  # the name only: whatever is there now is not followed
        raise


def replace_private(path: Path, data: str | bytes, *, durable: bool = False) -> None:
    """``path`` replaced, all at once, by a new 0600 file holding ``data`` (replace_in, through a
    descriptor of its folder, which must not be a link)."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        replace_in(dir_fd, path.name, data.encode() if isinstance(data, str) else data, durable=durable)
    finally:
        os.close(dir_fd)


def root_folder_problem(
    st: os.stat_result, most_open: int, owner_hint: str = "", link_hint: str = "a symlink?"
) -> str | None:
    """Why a folder root relies on (its lstat ``st``) is not safe, or None: it is not a real folder
    (``link_hint`` says what it may be), it is another account's (when root asks; ``owner_hint`` says
    what may cause it), or it gives group or others more than the mode ``most_open`` does."""
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"is not a folder ({link_hint})"
    if os.geteuid() == 0 and st.st_uid != 0:
        return f"is owned by uid {st.st_uid}, not root{owner_hint}"
    if stat.S_IMODE(st.st_mode) & ~most_open & 0o077:
        return f"has mode {mode_text(st)}, more open than {most_open:o}"
    return None


def check_private_dir(path: Path, mode: int) -> None:
    """A folder of the spool must be a real folder, root's, with no access for others beyond ``mode``."""
    if problem := root_folder_problem(os.lstat(path), mode, link_hint="a symlink swapped into the spool?"):
        raise Refused(f"{path} {problem}: refusing")


def close_private_dir(path: Path) -> None:
    """Make a folder of root's (checked already) 0700, whatever the umask or an older version made
    it: through a descriptor, never following a link."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(exc: OSError, what: str) -> StorageIOError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{what}: disk full")
    return StorageIOError(f"{what}: {exc.strerror or exc}")


def mode_text(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):o}"


def sync_file_system(path: Path) -> None:
    """syncfs(2) of the file system holding ``path``: every file written there so far is durable."""
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            errno_value = ctypes.get_errno()
            raise OSError(errno_value, os.strerror(errno_value), str(path))
    finally:
        os.close(fd)


def allow_open_files(more: int) -> None:
    """Room for ``more`` descriptors than this process has open now: the soft limit raised towards
    the hard one where it is short (a job of a thousand threads has a thousand core images, and the
    hook's seal and its hashing each open them all at once)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    needed = open_now + more + 64
    if needed > soft and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed + 1024), hard))

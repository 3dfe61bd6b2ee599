"""Small files and folders of root's: written whole and private, fsync'd, checked before use, and the
one way an OSError becomes the product's I/O error."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from mom_checkpoint.platform.errors import DiskFull, Refused, StorageIOError


def write_private(path: Path, data: str | bytes) -> None:
    """Create a small file only its owner can read (never through a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def check_private_dir(path: Path, mode: int) -> None:
    """A folder of the spool must be a real folder, root's, with no access for others beyond ``mode``."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise Refused(f"{path} is not a folder (a symlink swapped into the spool?): refusing")
    if os.geteuid() == 0 and st.st_uid != 0:
        raise Refused(f"{path} is owned by uid {st.st_uid}, not root: refusing")
    if stat.S_IMODE(st.st_mode) & ~mode & 0o077:
        raise Refused(f"{path} has mode {mode_text(st)}, more open than {mode:o}: refusing")


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

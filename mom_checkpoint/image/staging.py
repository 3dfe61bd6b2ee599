"""Root's own copy of an image for one restore: what the restorer decides from cannot change under it.

In job-user mode the image folder is the job user's: whatever root checks in it, the user can change a
moment later, before the restorer reads it. So for a restore root copies the image's small files
(everything the restorer takes decisions from: credentials, files, namespaces) into a folder of its
own and links the large page files in (their content is the job's memory: the user may change their
own memory, nothing more). The copy is read through a descriptor (``/proc/self/fd/N``): its folder
sits in a folder only root can enter, so nobody else can reach it by path, and its files are root's,
so the job's user (whose restorer reads them) cannot change them.

Every source file is opened through safefs (no symlink, regular files only) and must have exactly the
size the manifest records, so the copy is bounded by what root itself recorded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
from msgspec import field

from mom_checkpoint.image.hashing import ImageFile
from mom_checkpoint.image.layout import IMAGE
from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.errors import StorageIOError, TimedOut, VerificationFailed
from mom_checkpoint.platform.files import storage_error, write_all

PINNED = "pinned"  # in a restart's work folder: root's 0700
CHUNK = 1 << 20
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class StagedImage(msgspec.Struct):
    """The image a restorer reads: ``base``/image/, open as ``fd``."""

    base: Path
    fd: int | None = None
    contents: dict[str, bytes] = field(default_factory=dict)  # the small files copied, by name
    # what the backend read in the copy: the capabilities its restorer needs (None: its usual ones),
    # and the pids of tasks that were stopped when they were checkpointed (they stay stopped)
    capabilities: tuple[str, ...] | None = None
    stopped: frozenset[int] = frozenset()

    @property
    def image_dir(self) -> Path:
        return self.base / IMAGE

    @property
    def restorer_path(self) -> str:
        """How the restorer names the image folder: through the descriptor when there is one."""
        return f"/proc/self/fd/{self.fd}" if self.fd is not None else str(self.image_dir)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def stage(
    generation: Path,
    files: Sequence[ImageFile],
    work: Path,
    linked: re.Pattern[str],
    *,
    link: bool = True,
    reader: int = 0,
    deadline: float | None = None,
) -> StagedImage:
    """Copy the generation's image files named in ``files`` (the manifest root wrote) into
    ``work``/pinned/image: files whose names match ``linked`` are hard links to the originals (with
    ``link=False``: root's copies, streamed, for a restorer that becomes the job and keeps its
    descriptor of the folder), the others root's own copies (kept in memory too, for the backend to
    inspect). A file the restorer (uid ``reader``) could not read through a link (a generation made
    in root mode, restored in job-user mode: root's 0600 pages) is streamed into a copy instead.
    Copying stops at ``deadline`` (monotonic): TimedOut, and the caller removes what was staged."""
    base = work / PINNED
    try:
        base.mkdir(mode=0o700)
        (base / IMAGE).mkdir()
        os.chmod(base / IMAGE, 0o755)  # whatever the umask: the job user's restorer lists it
    except OSError as exc:
        raise storage_error(exc, f"cannot create {base}") from None
    staged = StagedImage(base)
    source = safefs.open_dir(generation / IMAGE)
    target = safefs.open_dir(base / IMAGE)
    try:
        for entry in files:
            name = _plain_name(entry.path)
            fd, st = safefs.open_regular(name, dir_fd=source)
            try:
                if st.st_size != entry.size:
                    raise VerificationFailed(
                        f"{generation}: {entry.path} has changed since the checkpoint (size {st.st_size}, "
                        f"expected {entry.size}): refusing to restore it"
                    )
                if not linked.fullmatch(name):
                    staged.contents[name] = _copy(fd, entry.size, name, target)
                elif not (link and _readable(st, reader)) or not _link(fd, name, target):
                    # the job's memory, on another file system (or at the link limit, or not
                    # readable by the restorer): copied, never held
                    _stream(fd, entry.size, name, target, deadline)
            finally:
                os.close(fd)
        staged.fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=target)
    except OSError as exc:
        raise storage_error(exc, f"cannot copy {generation} for the restore") from None
    finally:
        os.close(source)
        os.close(target)
    return staged


def _plain_name(path: str) -> str:
    """CRIU's images are one flat folder: "image/<name>", nothing deeper."""
    prefix = f"{IMAGE}/"
    name = path[len(prefix) :] if path.startswith(prefix) else ""
    if not name or "/" in name or name in (".", ".."):
        raise VerificationFailed(f"the manifest names {path!r}, not a file of the image folder")
    return name


def _readable(st: os.stat_result, reader: int) -> bool:
    """Whether a restorer running as ``reader`` may read the file through a hard link of it."""
    return reader in (0, st.st_uid) or bool(st.st_mode & 0o004)


def _link(fd: int, name: str, target: int) -> bool:
    """A hard link to the open file (never to whatever its path names now); False where the file
    system cannot link (another file system), and it is copied instead."""
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=target, follow_symlinks=True)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOSYS):
            return False
        raise
    return True


def _stream(fd: int, size: int, name: str, target: int, deadline: float | None = None) -> None:
    """Exactly ``size`` bytes of the open file into root's copy, a chunk at a time: a page file that
    cannot be linked is as large as the job's memory, and is never held in memory."""
    with _root_copy(name, target) as out:
        done = 0
        while done < size:
            if deadline is not None and time.monotonic() > deadline:
                raise TimedOut(f"copying {name} for the restore did not finish within timeout_s")
            sent = os.sendfile(out, fd, done, min(CHUNK, size - done))
            if not sent:
                raise StorageIOError(f"{name} shrank while it was being copied")
            done += sent


def _copy(fd: int, size: int, name: str, target: int) -> bytes:
    """Exactly ``size`` bytes of the open file into root's copy, returned too."""
    data = bytearray()
    while len(data) < size:
        chunk = os.pread(fd, min(CHUNK, size - len(data)), len(data))
        if not chunk:
            raise StorageIOError(f"{name} shrank while it was being copied")
        data += chunk
    with _root_copy(name, target) as out:
        write_all(out, data)
    return bytes(data)


@contextlib.contextmanager
def _root_copy(name: str, target: int) -> Iterator[int]:
    """A new file of root's, 0644 whatever the umask (the job user's restorer reads it; its folder only
    root can enter), open for writing; removed again if the writing fails."""
    out = os.open(name, _NEW_FILE, 0o600, dir_fd=target)
    try:
        os.fchmod(out, 0o644)
        yield out
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=target)
        raise
    finally:
        os.close(out)

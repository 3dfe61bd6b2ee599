"""sha256 of image files: run after the job is let go, on every core, fsync'ing each file as it goes.

Files are opened without following symlinks and must be regular files: a user who owns an image folder
cannot make root read a FIFO (and hang) or another file through a link.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageFile:
    path: str  # relative to the generation folder, e.g. "image/pages-1.img"
    size: int
    sha256: str


class NotARegularFile(OSError):
    pass


Progress = Callable[[int], None]  # told the number of bytes just hashed
CHUNK = 1 << 20


def digest_file(path: Path, *, fsync: bool = False, progress: Progress | None = None) -> tuple[int, str]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb", buffering=0) as fh:
            if progress is None:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            else:
                hasher = hashlib.sha256()
                buffer = bytearray(CHUNK)
                view = memoryview(buffer)
                while n := fh.readinto(buffer):
                    hasher.update(view[:n])
                    progress(n)
                digest = hasher.hexdigest()
        if fsync:
            os.fsync(fd)
        return st.st_size, digest
    finally:
        os.close(fd)


def digest_files(
    base: Path, relpaths: Sequence[str], *, fsync: bool = False, progress: Progress | None = None
) -> list[ImageFile]:
    """Hash (and optionally fsync) every file; threads overlap I/O and hashlib releases the GIL."""

    def one(rel: str) -> ImageFile:
        size, digest = digest_file(base / rel, fsync=fsync, progress=progress)
        return ImageFile(rel, size, digest)

    workers = min(len(relpaths), os.cpu_count() or 1)
    if workers <= 1:
        return [one(rel) for rel in relpaths]
    # Largest first, so the big pages file starts at once and the small ones fill the other cores.
    by_size = sorted(relpaths, key=lambda rel: _size(base / rel), reverse=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = {f.path: f for f in pool.map(one, by_size)}
    return [results[rel] for rel in relpaths]


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0

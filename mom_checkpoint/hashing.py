"""sha256 of image files: run after the job is let go, on every core, fsync'ing each file as it goes.

Files are opened without following symlinks and must be regular files: a user who owns an image folder
cannot make root read a FIFO (and hang) or another file through a link.

A freshly dumped image is still in the page cache and not yet on disk: with ``fsync`` a thread of its own
writes the files back while the others hash them, so the two overlap instead of adding up. Images too
small to gain from threads (the psnc and blcr stand-ins, small jobs) are done in the calling thread,
without a thread pool.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Sequence
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
THREADS_FROM_BYTES = 8 << 20  # below this much in all, threads cost more than they save


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """A read-only descriptor of a regular file, never through a symlink, never blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(f"{path} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def digest_file(path: Path, *, fsync: bool = False, progress: Progress | None = None) -> tuple[int, str]:
    fd, st = _open_regular(path)
    try:
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


def sync_file(path: Path) -> None:
    fd, _ = _open_regular(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def digest_files(
    base: Path, relpaths: Sequence[str], *, fsync: bool = False, progress: Progress | None = None
) -> list[ImageFile]:
    """Hash (and optionally fsync) every file; threads overlap I/O and hashlib releases the GIL."""

    def one(rel: str, sync: bool) -> ImageFile:
        size, digest = digest_file(base / rel, fsync=sync, progress=progress)
        return ImageFile(rel, size, digest)

    sizes = {rel: _size(base / rel) for rel in relpaths}
    workers = min(len(relpaths), os.cpu_count() or 1)
    if sum(sizes.values()) < THREADS_FROM_BYTES or (workers <= 1 and not fsync):
        return [one(rel, fsync) for rel in relpaths]
    from concurrent.futures import ThreadPoolExecutor  # only for images that gain from it

    # Largest first, so the big pages file starts at once and the small ones fill the other cores.
    by_size = sorted(relpaths, key=lambda rel: sizes[rel], reverse=True)
    failed = threading.Event()
    with ThreadPoolExecutor(max_workers=workers + (1 if fsync else 0)) as pool:
        syncing = pool.submit(_sync_all, base, by_size, failed) if fsync else None
        try:
            results = {f.path: f for f in pool.map(lambda rel: one(rel, False), by_size)}
        except BaseException:
            failed.set()  # stop writing back an image that is going to be thrown away
            raise
        if syncing is not None:
            syncing.result()  # an fsync error (EIO, ENOSPC at write-back) fails the whole call
    return [results[rel] for rel in relpaths]


def _sync_all(base: Path, relpaths: Sequence[str], failed: threading.Event) -> None:
    """fsync each file in turn, the largest first, while other threads hash them."""
    for rel in relpaths:
        if failed.is_set():
            return
        sync_file(base / rel)


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0

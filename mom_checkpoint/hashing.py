"""sha256 of image files: run after the job is let go, on every core, fsync'ing each file as it goes.

Every file is opened below its generation folder through ``safefs`` (no symlink at any component, no
FIFO, regular files only) before any byte is read, and then read through that descriptor, exactly the
size ``fstat`` gave and no more: a user who owns the image folder cannot make root follow a link,
hang on a FIFO, or read past a bound, whatever they swap in meanwhile. ``max_bytes`` caps the whole
image and ``deadline`` the time spent.

A freshly dumped image is still in the page cache and not yet on disk: with ``fsync`` a thread of its own
writes the files back while the others hash them, so the two overlap instead of adding up. Images too
small to gain from threads (the psnc and blcr stand-ins, small jobs) are done in the calling thread,
without a thread pool.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mom_checkpoint import safefs
from mom_checkpoint.errors import StorageIOError, TimedOut


@dataclass(frozen=True)
class ImageFile:
    path: str  # relative to the generation folder, e.g. "image/pages-1.img"
    size: int
    sha256: str


class SizeChanged(StorageIOError):
    """A file's size is not the one expected (verification): it was not read. Args: path, actual
    size, expected size."""

    template = "{} has {} bytes, {} expected"


Progress = Callable[[int], None]  # told the number of bytes just hashed
CHUNK = 1 << 20
THREADS_FROM_BYTES = 8 << 20  # below this much in all, threads cost more than they save


@dataclass(frozen=True)
class _Opened:
    rel: str
    fd: int
    size: int


def digest_files(
    base: Path,
    relpaths: Sequence[str],
    *,
    fsync: bool = False,
    progress: Progress | None = None,
    sizes: Sequence[int] | None = None,
    max_bytes: int | None = None,
    deadline: float | None = None,
) -> list[ImageFile]:
    """Hash (and optionally fsync) every file below ``base``, in the order given.

    ``sizes``: the size each file must have (a file of another size raises SizeChanged unread);
    ``max_bytes``: the most all of them may hold together (safefs.TooLarge); ``deadline``: a
    ``time.monotonic()`` value past which the call stops with TimedOut.
    """
    base_fd = safefs.open_dir(base)
    opened: list[_Opened] = []
    try:
        for i, rel in enumerate(relpaths):
            fd, st = safefs.open_regular(rel, dir_fd=base_fd)
            opened.append(_Opened(rel, fd, st.st_size))
            if sizes is not None and st.st_size != sizes[i]:
                raise SizeChanged(rel, st.st_size, sizes[i])
        total = sum(f.size for f in opened)
        if max_bytes is not None and total > max_bytes:
            raise safefs.TooLarge(
                f"{base}: the image holds {total} bytes, more than the {max_bytes} it can hold: refusing it"
            )
        return _digest_opened(opened, total, fsync=fsync, progress=progress, deadline=deadline)
    finally:
        for f in opened:
            os.close(f.fd)
        os.close(base_fd)


def _digest_opened(
    opened: list[_Opened], total: int, *, fsync: bool, progress: Progress | None, deadline: float | None
) -> list[ImageFile]:
    workers = min(len(opened), os.cpu_count() or 1)
    if total < THREADS_FROM_BYTES or (workers <= 1 and not fsync):
        results = []
        for f in opened:
            results.append(ImageFile(f.rel, f.size, _digest(f, progress, deadline)))
            if fsync:
                os.fsync(f.fd)
        return results
    from concurrent.futures import ThreadPoolExecutor  # only for images that gain from it

    # Largest first, so the big pages file starts at once and the small ones fill the other cores.
    by_size = sorted(opened, key=lambda f: f.size, reverse=True)
    failed = threading.Event()
    with ThreadPoolExecutor(max_workers=workers + (1 if fsync else 0)) as pool:
        syncing = pool.submit(_sync_all, by_size, failed) if fsync else None
        try:
            hashed = pool.map(lambda f: _digest(f, progress, deadline), by_size)
            digests = {f.rel: d for f, d in zip(by_size, hashed, strict=True)}
        except BaseException:
            failed.set()  # stop writing back an image that is going to be thrown away
            raise
        if syncing is not None:
            syncing.result()  # an fsync error (EIO, ENOSPC at write-back) fails the whole call
    return [ImageFile(f.rel, f.size, digests[f.rel]) for f in opened]


def _digest(f: _Opened, progress: Progress | None, deadline: float | None) -> str:
    """sha256 of exactly the first ``f.size`` bytes (a file that grows meanwhile is not read further;
    one that shrinks hashes what is there, and then no longer matches its size)."""
    hasher = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    offset = 0
    while offset < f.size:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimedOut(f"out of time while hashing {f.rel} ({offset} of {f.size} bytes)")
        n = os.preadv(f.fd, [view[: min(CHUNK, f.size - offset)]], offset)
        if n == 0:
            break
        hasher.update(view[:n])
        offset += n
        if progress is not None:
            progress(n)
    return hasher.hexdigest()


def _sync_all(opened: Sequence[_Opened], failed: threading.Event) -> None:
    """fsync each file in turn, the largest first, while other threads hash them."""
    for f in opened:
        if failed.is_set():
            return
        os.fsync(f.fd)

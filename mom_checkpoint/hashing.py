"""Digests of image files: run after the job is let go, on every core, fsync'ing each file as it goes.

A digest names its algorithm, ``"blake3:<hex>"`` or ``"sha256:<hex>"`` (as OCI descriptors do): new
manifests get BLAKE3 (about twice sha256's speed on one core here, four times on machines with wider
vector units), and a file recorded with sha256 by an older mom-checkpoint is checked with sha256.

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

import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mom_checkpoint import safefs
from mom_checkpoint.errors import StorageIOError, TimedOut

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

ALGORITHM = "blake3"  # what new digests use
DIGEST = re.compile(r"(blake3|sha256):[0-9a-f]{64}")  # a digest a manifest may record


@dataclass(frozen=True)
class ImageFile:
    path: str  # relative to the generation folder, e.g. "image/pages-1.img"
    size: int
    digest: str  # "<algorithm>:<hex>", e.g. "blake3:af13..."


class Hasher(Protocol):
    def update(self, data: ReadableBuffer, /) -> object: ...

    def hexdigest(self) -> str: ...


def hasher(algorithm: str) -> Hasher:
    """A new hasher for ``algorithm`` (one DIGEST names)."""
    if algorithm == "blake3":
        from blake3 import blake3

        return blake3()  # one thread per file: the files of an image are hashed side by side
    if algorithm == "sha256":  # older generations' (OpenSSL's module: imported only for them)
        import hashlib

        return hashlib.sha256()
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


def algorithm_of(digest: str) -> str:
    """The algorithm a recorded digest names (its text before the colon)."""
    return digest.partition(":")[0]


def finish(algorithm: str, state: Hasher) -> str:
    return f"{algorithm}:{state.hexdigest()}"


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
    algorithm: str


def digest_files(
    base: Path,
    relpaths: Sequence[str],
    *,
    fsync: bool = False,
    progress: Progress | None = None,
    sizes: Sequence[int] | None = None,
    max_bytes: int | None = None,
    deadline: float | None = None,
    algorithms: Sequence[str] | None = None,
) -> list[ImageFile]:
    """Hash (and optionally fsync) every file below ``base``, in the order given.

    ``algorithms``: the algorithm of each file (to check digests recorded earlier; default: ALGORITHM
    for all); ``sizes``: the size each file must have (a file of another size raises SizeChanged unread);
    ``max_bytes``: the most all of them may hold together (safefs.TooLarge); ``deadline``: a
    ``time.monotonic()`` value past which the call stops with TimedOut.
    """
    with open_files(base, relpaths, sizes=sizes, max_bytes=max_bytes, algorithms=algorithms) as files:
        return files.digest(fsync=fsync, progress=progress, deadline=deadline)


class OpenFiles:
    """Files opened for hashing (open_files), hashed later, by any thread: what the hashing reads was
    decided, and opened with this process's rights, when they were opened."""

    def __init__(self, opened: list[_Opened]) -> None:
        self._opened = opened

    def digest(
        self, *, fsync: bool = False, progress: Progress | None = None, deadline: float | None = None
    ) -> list[ImageFile]:
        total = sum(f.size for f in self._opened)
        return _digest_opened(self._opened, total, fsync=fsync, progress=progress, deadline=deadline)

    def close(self) -> None:
        while self._opened:
            os.close(self._opened.pop().fd)

    def __enter__(self) -> OpenFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_files(
    base: Path,
    relpaths: Sequence[str],
    *,
    sizes: Sequence[int] | None = None,
    max_bytes: int | None = None,
    algorithms: Sequence[str] | None = None,
) -> OpenFiles:
    """Open every file below ``base`` (safefs: no link, regular files only) and check the sizes and the
    bound, reading nothing (see digest_files)."""
    base_fd = safefs.open_dir(base)
    opened: list[_Opened] = []
    try:
        for i, rel in enumerate(relpaths):
            fd, st = safefs.open_regular(rel, dir_fd=base_fd)
            opened.append(_Opened(rel, fd, st.st_size, algorithms[i] if algorithms else ALGORITHM))
            if sizes is not None and st.st_size != sizes[i]:
                raise SizeChanged(rel, st.st_size, sizes[i])
        total = sum(f.size for f in opened)
        if max_bytes is not None and total > max_bytes:
            raise safefs.TooLarge(
                f"{base}: the image holds {total} bytes, more than the {max_bytes} it can hold: refusing it"
            )
    except BaseException:
        OpenFiles(opened).close()
        raise
    finally:
        os.close(base_fd)
    return OpenFiles(opened)


def _digest_opened(
    opened: list[_Opened], total: int, *, fsync: bool, progress: Progress | None, deadline: float | None
) -> list[ImageFile]:
    # (only for files larger than its window: ctypes costs a small image's call a few ms to import)
    big = any(f.size > WRITE_BEHIND_WINDOW for f in opened)
    write_behind = _write_behind() if fsync and big else None
    workers = min(len(opened), os.cpu_count() or 1)
    if total < THREADS_FROM_BYTES or workers <= 1:
        return [
            ImageFile(f.rel, f.size, _digest_and_sync(f, fsync, write_behind, progress, deadline))
            for f in opened
        ]
    from concurrent.futures import ThreadPoolExecutor  # only for images that gain from it

    # Largest first, so the big pages file starts at once and the small ones (each fsync'd by the
    # thread that hashed it) fill the other cores.
    by_size = sorted(opened, key=lambda f: f.size, reverse=True)
    failed = threading.Event()

    def one(f: _Opened) -> str:
        if failed.is_set():  # stop writing back an image that is going to be thrown away
            raise _Abandoned(f.rel)  # never seen: map raises the earlier file's error first
        try:
            return _digest_and_sync(f, fsync, write_behind, progress, deadline)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = {f.rel: d for f, d in zip(by_size, pool.map(one, by_size), strict=True)}
    return [ImageFile(f.rel, f.size, digests[f.rel]) for f in opened]


class _Abandoned(Exception):
    """A file not hashed because an earlier one failed."""


def _digest_and_sync(
    f: _Opened,
    fsync: bool,
    write_behind: WriteBehind | None,
    progress: Progress | None,
    deadline: float | None,
) -> str:
    digest = _digest(f, progress, deadline, write_behind)
    if fsync:
        os.fsync(f.fd)  # an error (EIO, ENOSPC at write-back) fails the whole call
    return digest


def _digest(
    f: _Opened, progress: Progress | None, deadline: float | None, write_behind: WriteBehind | None = None
) -> str:
    """The digest of exactly the first ``f.size`` bytes (a file that grows meanwhile is not read further;
    one that shrinks hashes what is there, and then no longer matches its size). With ``write_behind``,
    each window of the file is handed to the disk as soon as it has been hashed: the write-back trails
    the hashing instead of contending with it for the same pages (both at once took as long as one
    after the other here), and the fsync that follows finds little left to write."""
    state = hasher(f.algorithm)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    offset = 0
    written = 0
    while offset < f.size:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimedOut(f"out of time while hashing {f.rel} ({offset} of {f.size} bytes)")
        n = os.preadv(f.fd, [view[: min(CHUNK, f.size - offset)]], offset)
        if n == 0:
            break
        state.update(view[:n])
        offset += n
        if write_behind is not None and offset - written >= WRITE_BEHIND_WINDOW:
            write_behind(f.fd, written, offset - written)
            written = offset
        if progress is not None:
            progress(n)
    return finish(f.algorithm, state)


WriteBehind = Callable[[int, int, int], None]  # (fd, offset, length): start writing that range back
WRITE_BEHIND_WINDOW = 8 << 20


def _write_behind() -> WriteBehind | None:
    """sync_file_range(SYNC_FILE_RANGE_WRITE): start the write-back of a range and return at once
    (Linux; Python's os module has no binding). None where libc has no such call: then the fsync after
    the hashing writes the whole file."""
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    start_write = 2  # SYNC_FILE_RANGE_WRITE

    def write_behind(fd: int, offset: int, length: int) -> None:
        call(fd, offset, length, start_write)  # a failure shows again, and is raised, at the fsync

    return write_behind

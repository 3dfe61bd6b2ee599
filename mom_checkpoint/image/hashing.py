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

The files a checkpointer only ever appends to (CRIU's pages-N.img, the job's memory) are hashed while it
writes them (Follower): their bytes are read moments after they were written, on a core the dump leaves
idle, and what is left after the dump is their tail and the fsync (Partial, digest_files's ``resume``).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import msgspec

from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.errors import StorageIOError, TimedOut
from mom_checkpoint.platform.files import allow_open_files

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

ALGORITHM = "blake3"  # what new digests use
DIGEST = re.compile(r"(blake3|sha256):[0-9a-f]{64}")  # a digest a manifest may record


class ImageFile(msgspec.Struct, frozen=True):
    path: str  # relative to the generation folder, e.g. "image/pages-1.img"
    size: int
    digest: str  # "<algorithm>:<hex>", e.g. "blake3:af13..."


class Hasher(Protocol):
    def update(self, data: ReadableBuffer, /) -> object: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Hasher: ...


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


class Partial(msgspec.Struct, frozen=True):
    """What a Follower hashed of one file while the checkpointer wrote it: its first ``offset`` bytes,
    the file being inode ``inode`` of device ``device``."""

    rel: str  # relative to the base folder, as digest_files's relpaths
    device: int
    inode: int
    offset: int
    state: Hasher  # the hashing of those bytes (copied when taken over: a Partial can be used again)
    algorithm: str


class _Opened(msgspec.Struct, frozen=True):
    rel: str
    fd: int
    size: int
    algorithm: str
    start: int = 0  # bytes already hashed into ``state`` (a Partial taken over)
    state: Hasher | None = None


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
    resume: Mapping[str, Partial] | None = None,
) -> list[ImageFile]:
    """Hash (and optionally fsync) every file below ``base``, in the order given.

    ``algorithms``: the algorithm of each file (to check digests recorded earlier; default: ALGORITHM
    for all); ``sizes``: the size each file must have (a file of another size raises SizeChanged unread);
    ``max_bytes``: the most all of them may hold together (safefs.TooLarge); ``deadline``: a
    ``time.monotonic()`` value past which the call stops with TimedOut; ``resume``: what a Follower
    already hashed, by relpath, taken over where it is still the same file (inode) and no longer than
    it; any other file is hashed from its start.
    """
    with open_files(
        base, relpaths, sizes=sizes, max_bytes=max_bytes, algorithms=algorithms, resume=resume
    ) as files:
        return files.digest(fsync=fsync, progress=progress, deadline=deadline)


class OpenFiles:
    """Files opened for hashing (open_files), hashed later, by any thread: what the hashing reads was
    decided, and opened with this process's rights, when they were opened."""

    def __init__(self, opened: list[_Opened]) -> None:
        self._opened = opened

    def digest(
        self, *, fsync: bool = False, progress: Progress | None = None, deadline: float | None = None
    ) -> list[ImageFile]:
        return _digest_opened(self._opened, fsync=fsync, progress=progress, deadline=deadline)

    @property
    def files(self) -> list[tuple[str, int, int]]:
        """Each file's path (as given), descriptor and size, in the order given: for reading it
        otherwise (the vault's chunks, vault/seal.py), with the same checks behind it."""
        return [(f.rel, f.fd, f.size) for f in self._opened]

    @property
    def taken_over(self) -> int:
        """The bytes a Follower had hashed that this hashing takes over instead of reading them."""
        return sum(f.start for f in self._opened)

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
    resume: Mapping[str, Partial] | None = None,
    single_link: bool = False,
) -> OpenFiles:
    """Open every file below ``base`` (safefs: no link, regular files only, all on ``base``'s own file
    system) and check the sizes and the bound, reading nothing (see digest_files). ``single_link``:
    a file with another name anywhere (a hard link) is refused: in a fresh image the checkpointer
    made every file, and a link it made to a file of its user's would let them rewrite the image
    through that other name at any time after the dump."""
    allow_open_files(len(relpaths))
    base_fd = safefs.open_dir(base)
    opened: list[_Opened] = []
    try:
        device = os.fstat(base_fd).st_dev
        for i, rel in enumerate(relpaths):
            fd, st = safefs.open_regular(rel, dir_fd=base_fd)
            if st.st_dev != device:  # a mount over a name (a user's FUSE file, whose reads may hang)
                os.close(fd)
                raise safefs.UnsafePath(f"{base}/{rel} is on another file system than {base}: refusing it")
            if single_link and st.st_nlink != 1:
                os.close(fd)
                raise safefs.UnsafePath(
                    f"{base}/{rel} has {st.st_nlink} names (a hard link): refusing this image"
                )
            algorithm = algorithms[i] if algorithms else ALGORITHM
            partial = resume.get(rel) if resume else None
            if (
                partial is not None
                and (partial.device, partial.inode) == (st.st_dev, st.st_ino)
                and partial.algorithm == algorithm
                and partial.offset <= st.st_size
            ):
                opened.append(_Opened(rel, fd, st.st_size, algorithm, partial.offset, partial.state.copy()))
            else:
                opened.append(_Opened(rel, fd, st.st_size, algorithm))
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
    opened: list[_Opened], *, fsync: bool, progress: Progress | None, deadline: float | None
) -> list[ImageFile]:
    # (only for files larger than its window: ctypes costs a small image's call a few ms to import)
    big = any(f.size > WRITE_BEHIND_WINDOW for f in opened)
    write_behind = write_back_starter() if fsync and big else None
    workers = min(len(opened), os.cpu_count() or 1)
    if sum(f.size for f in opened) < THREADS_FROM_BYTES or workers <= 1:  # (hashing and fsync alike)
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
    state = f.state if f.state is not None else hasher(f.algorithm)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    offset = written = f.start
    if f.start and progress is not None:
        progress(f.start)
    # hashed while it was written (Follower): its write-back starts at once, in a thread of its own (a
    # range that large blocks its caller while the disk takes it in)
    with _writing_back(write_behind, f.fd, f.start):
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


@contextlib.contextmanager
def _writing_back(write_behind: WriteBehind | None, fd: int, length: int) -> Iterator[None]:
    """While the body runs, a thread starts the write-back of the first ``length`` bytes of ``fd``."""
    if write_behind is None or not length:
        yield
        return
    writer = threading.Thread(target=write_behind, args=(fd, 0, length), name="write-back", daemon=True)
    writer.start()
    try:
        yield
    finally:
        writer.join()


WriteBehind = Callable[[int, int, int], None]  # (fd, offset, length): start writing that range back
WRITE_BEHIND_WINDOW = 8 << 20


def write_back_starter() -> WriteBehind | None:
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


FOLLOW_POLL_S = 0.005  # how long the follower waits when it has caught up with the writer
FOLLOW_LIST_S = 0.1  # the folder is listed again at least this often (and whenever its mtime changes)
FOLLOW_MAX_FILES = 256  # files followed at most (one descriptor each); more are hashed after the dump
FOLLOW_MAX_ENTRIES = 10_000  # entries in the folder beyond which the following ends


class Follower:
    """Hashes the files a running checkpointer only ever appends to, as they grow.

    CRIU writes a process's memory into pages-N.img by splice(2) at the file's position, one pagemap
    entry after the other (criu/page-xfer.c, write_pages_loc), and never goes back: every byte below
    the file's size is final. So the bytes are hashed moments after they were written, on a core the
    dump leaves idle (CRIU works on one; the job is frozen), instead of being read back after the dump.
    (Here the first read of pages a dump has just written took five times the second, in the kernel:
    1 GiB in 0.5-0.6 s against 0.1 s, hashing aside; the follower spreads that over the dump.) The
    writer is not slowed: nothing is written back to disk meanwhile (that did slow it, by ~10 %).

    The folder may be the job user's (job-user mode), so every bound holds whatever the user puts in
    it: files are opened below it through descriptors (safefs: no symlink, regular files only) and
    followed only if they are on the folder's own file system with one link (as CRIU's are: a hard
    link or a mount over the name is left to the hashing after the dump), each inode once, at most
    FOLLOW_MAX_FILES of them; the folder is listed again when it changed (or every FOLLOW_LIST_S),
    and a folder of more than FOLLOW_MAX_ENTRIES entries ends the following; reads go up to the size
    ``fstat`` gives, never past ``max_bytes`` in all, and end at ``deadline``. Nothing here fails the
    call or touches the checkpointer: any error ends the following and discards what it hashed (the
    files are then hashed from their first byte), and digest_files takes a Partial over only where
    the file is still the same inode."""

    def __init__(
        self,
        base: Path,
        folder: str,
        names: re.Pattern[str],
        *,
        max_bytes: int | None,
        deadline: float | None,
    ) -> None:
        self._base = base
        self._folder = folder
        self._names = names
        self._max_bytes = max_bytes
        self._deadline = deadline
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._files: dict[str, _Growing] = {}
        self._seen: set[str] = set()  # names looked at (followed or not): never opened again
        self._inodes: set[tuple[int, int]] = set()
        self._buffer = bytearray(CHUNK)
        self.hashed = 0  # bytes hashed while the checkpointer ran
        self.error: BaseException | None = None
        self.still_running = False  # it did not stop within the time stop() was given

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="image-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> dict[str, Partial]:
        """Tell the follower to stop and wait for it (at most ``timeout_s``); what it hashed, by path
        below ``base``. Nothing if it failed or had not stopped by then (it stops after the read or
        the listing under way)."""
        self._stop.set()
        if self._thread is None:
            return {}
        self._thread.join(timeout_s)
        self.still_running = self._thread.is_alive()
        if self.still_running or self.error is not None:
            return {}
        return {
            rel: Partial(rel, g.device, g.inode, g.offset, g.state, ALGORITHM)
            for rel, g in self._files.items()
            if g.offset
        }

    def _run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # kept for the caller: the files are hashed from their start
            self.error = exc
        finally:
            for growing in self._files.values():
                os.close(growing.fd)

    def _follow(self) -> None:
        base_fd = safefs.open_dir(self._base)
        try:
            folder_fd = safefs.open_dir(self._folder, dir_fd=base_fd)
            if os.fstat(folder_fd).st_dev != os.fstat(base_fd).st_dev:
                os.close(folder_fd)
                raise safefs.UnsafePath(f"{self._folder} is on another file system than {self._base}")
        finally:
            os.close(base_fd)
        try:
            listed, listed_at = -1, 0.0  # the folder's mtime when it was last listed, and when
            while not self._stop.is_set():
                now = time.monotonic()
                if self._deadline is not None and now >= self._deadline:
                    return
                folder = os.fstat(folder_fd)
                # a name added, removed or renamed since (or within the same tick of the mtime's clock)
                if folder.st_mtime_ns != listed or now - listed_at >= FOLLOW_LIST_S:
                    listed, listed_at = folder.st_mtime_ns, now
                    self._list(folder_fd, folder.st_dev)
                if not self._catch_up():
                    self._stop.wait(FOLLOW_POLL_S)
        finally:
            os.close(folder_fd)

    def _list(self, folder_fd: int, device: int) -> None:
        with os.scandir(folder_fd) as entries:
            for count, entry in enumerate(entries):
                if count >= FOLLOW_MAX_ENTRIES:
                    raise safefs.TooLarge(f"{self._folder} holds more than {FOLLOW_MAX_ENTRIES} entries")
                name = entry.name
                if name in self._seen or not self._names.fullmatch(name):
                    continue
                if len(self._files) >= FOLLOW_MAX_FILES or self._stop.is_set():
                    return
                self._seen.add(name)
                self._open(folder_fd, name, device)

    def _open(self, folder_fd: int, name: str, device: int) -> None:
        state = hasher(ALGORITHM)
        try:
            fd, st = safefs.open_regular(name, dir_fd=folder_fd)
        except (OSError, safefs.UnsafePath):
            return  # left to the hashing after the dump, which refuses it
        if st.st_dev != device or st.st_nlink != 1 or (st.st_dev, st.st_ino) in self._inodes:
            os.close(fd)  # not CRIU's (a mount or a link over the name): hashed after the dump
            return
        self._inodes.add((st.st_dev, st.st_ino))
        rel = f"{self._folder}/{name}"
        self._files[rel] = _Growing(rel, fd, st.st_dev, st.st_ino, state)

    def _catch_up(self) -> bool:
        """Hash what the files gained since the last look; whether there was anything."""
        read = False
        view = memoryview(self._buffer)
        for growing in self._files.values():
            size = os.fstat(growing.fd).st_size
            if size < growing.offset:  # not only appended to: nothing of it can be taken over
                raise SizeChanged(growing.rel, size, growing.offset)
            while growing.offset < size and not self._stop.is_set():
                n = min(CHUNK, size - growing.offset)
                if self._max_bytes is not None and self.hashed + n > self._max_bytes:
                    self._stop.set()  # too large an image: the hashing after the dump refuses it
                    return False
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    self._stop.set()
                    return False
                n = os.preadv(growing.fd, [view[:n]], growing.offset)
                if n == 0:
                    break
                growing.state.update(view[:n])
                growing.offset += n
                self.hashed += n
                read = True
        return read


class _Growing:
    """One file being followed."""

    __slots__ = ("device", "fd", "inode", "offset", "rel", "state")

    def __init__(self, rel: str, fd: int, device: int, inode: int, state: Hasher) -> None:
        self.rel = rel
        self.fd = fd
        self.device = device
        self.inode = inode
        self.offset = 0
        self.state = state

"""Each chunk's digest of a generation, recorded by the hook as it seals it, for the vault's copier.

Where a vault is configured, the hook cuts the just-dumped generation into the chunks the vault
stores (vault/chunking.py) and hashes each chunk and each whole file from the same bytes, in a
thread of its own while its main thread hashes and fsyncs the files for the manifest (the fsync
waits on the disk; the seal takes a core, BLAKE3 twice over about 0.5 s a GiB here, the image still
in the page cache). Where every file's digest is the one the manifest records, it writes the chunks
beside the manifest, as the generation's ``chunks.index`` (vault/index.py's format, every chunk's
``stored`` 0), root's 0600 in root's 0700 folder, before the manifest and the rename that
publishes both.

vault-sync then reads only the chunks its owner's store lacks (vault/chunked.py's ``cut``): a
second copy of a job that changed 5 % of its memory reads 5 % of its image instead of all of it.
This index is root's record of the generation as much as the manifest is, and is known to make
the files the manifest records: root computes both from the files after the dump, when no process
of the job's user can reach them any more (docs/SECURITY.md: every generation folder is root's
0700, the checkpointer's image folder reached through a descriptor only, and a file of the image
with another name, a hard link its checkpointer made, refuses the image). A chunk written to the
vault is hashed again from the bytes written; a chunk the vault already holds is not read at all.

Nothing of it can fail a checkpoint: a generation whose chunks could not be recorded in time (or at
all, or not of the bytes the manifest records) is published without its index (the hook's log says
why: ``seal.no_chunk_index``), and its copy hashes every file whole against the manifest as before.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import blake3
import msgspec

from mom_checkpoint.image.hashing import ImageFile, open_files
from mom_checkpoint.platform.errors import Error, StorageIOError, TimedOut
from mom_checkpoint.platform.files import allow_open_files, read_at
from mom_checkpoint.vault import chunking, index
from mom_checkpoint.vault.index import FORMAT, ChunkRef, FileChunks, Index

WAIT_AT_LEAST_S = 1.0  # the hook waits for the chunks this long, or as long as they have taken so far


class Sealing:
    """The chunks of a generation's files (``relpaths``, below ``base``) hashed in a thread of its
    own, from the moment it is made: ``record`` waits for them and writes them down."""

    def __init__(
        self, base: Path, relpaths: Sequence[str], *, max_bytes: int | None, deadline: float | None
    ) -> None:
        # every file open twice at once (here, and in the hook's hashing): room for both, before
        # either opens one (each only makes room for its own once it begins)
        allow_open_files(2 * len(relpaths))
        self._stop = threading.Event()
        self._sealed: Sealed | None = None
        self.error: BaseException | None = None
        self._started = time.monotonic()
        arguments = (base, list(relpaths), max_bytes, deadline)
        self._thread = threading.Thread(target=self._run, args=arguments, name="seal-chunks", daemon=True)
        self._thread.start()

    def _run(self, base: Path, relpaths: list[str], max_bytes: int | None, deadline: float | None) -> None:
        try:
            self._sealed = chunk_index(
                base, relpaths, max_bytes=max_bytes, deadline=deadline, stop=self._stop
            )
        except BaseException as exc:  # said by record, never raised into the hook
            self.error = exc

    def record(self, folder: Path, files: Sequence[ImageFile], *, deadline: float | None) -> str | None:
        """Write the index into ``folder`` (the incoming generation), once the thread has ended, if
        it lists exactly ``files`` (the manifest's, image and kept, in its order) at their sizes.
        Waits at most as long again as the hashing has run so far (at least WAIT_AT_LEAST_S), and
        not past ``deadline``: the hook is never held much longer for the copier's sake. Returns why
        no index was written (None when it was); nothing is left of one that was not."""
        now = time.monotonic()
        wait = max(WAIT_AT_LEAST_S, now - self._started)
        if deadline is not None:
            wait = min(wait, deadline - now)
        self._thread.join(max(0.0, wait))
        if self._thread.is_alive():
            self.cancel()
            return f"the chunks were not all hashed {wait:.1f} s after the files were"
        if self.error is not None or self._sealed is None:
            return f"{type(self.error).__name__}: {self.error}"
        sealed = self._sealed
        if not matches(sealed.index, files):
            return "the chunks hashed are not those of the files the manifest lists"
        if changed := [f.path for f, digest in zip(files, sealed.digests, strict=True) if f.digest != digest]:
            # the bytes after the dump are not those the manifest's digest was taken of (a
            # checkpointer that rewrote what the follower had hashed): the copier hashes them whole,
            # and refuses them
            return f"{changed[0]} is not what the manifest records ({len(changed)} such file(s))"
        try:
            index.write(folder, sealed.index)
        except (Error, OSError) as exc:  # (a disk full): no index, not half of one
            with contextlib.suppress(OSError):
                os.unlink(folder / index.INDEX)
            return f"cannot write {index.INDEX}: {exc}"
        return None

    def cancel(self) -> None:
        """Stop hashing (within one chunk); nothing is waited for."""
        self._stop.set()


class Sealed(msgspec.Struct, frozen=True):
    """A generation's chunks, and the digest of each whole file taken from the same bytes."""

    index: Index
    digests: list[str]  # "blake3:<hex>", in the order of index.files


def chunk_index(
    base: Path,
    relpaths: Sequence[str],
    *,
    max_bytes: int | None = None,
    deadline: float | None = None,
    stop: threading.Event | None = None,
) -> Sealed:
    """Each file below ``base`` cut as the vault cuts it, each chunk hashed, and each whole file from
    the same bytes (so that the chunks are known to make the file the manifest records): opened as
    the hook's own hashing opens a fresh image (hashing.open_files: no link of either kind, regular
    files on ``base``'s file system, the image bound), read through one buffer of the largest chunk
    (the hook's memory stays small), each byte once."""

    def going_on(rel: str) -> None:
        if stop is not None and stop.is_set():
            raise TimedOut(f"stopped while hashing the chunks of {rel}")
        if deadline is not None and time.monotonic() > deadline:
            raise TimedOut(f"out of time while hashing the chunks of {rel}")

    with open_files(base, relpaths, max_bytes=max_bytes, single_link=True) as opened:
        files = opened.files
        sizes = {rel: size for rel, _, size in files}
        descriptors = {rel: fd for rel, fd, _ in files}

        def small(rel: str) -> bytes:  # a pagemap (chunking.plan bounds what it asks for)
            going_on(rel)
            return _pread_exactly(descriptors[rel], 0, sizes[rel], rel)

        plan = chunking.plan([ImageFile(rel, size, "") for rel, _, size in files], small)
        # two buffers of the largest chunk: one is read and its chunk hashed here while the other's
        # bytes go into their file's digest in a second thread (the hook's memory stays small)
        buffers = [memoryview(bytearray(chunking.MAX_CHUNK)) for _ in range(2)]
        pending: list[Future[object] | None] = [None, None]
        entries = []
        digests = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seal-files") as files_hashing:
            for rel, fd, _ in files:
                refs = []
                whole = blake3.blake3()
                offset = 0
                for number, size in enumerate(plan[rel]):
                    going_on(rel)
                    turn = number % 2
                    if (earlier := pending[turn]) is not None:
                        earlier.result()  # its buffer is free again
                    view = buffers[turn][:size]
                    _pread_into(fd, view, offset, rel)
                    pending[turn] = files_hashing.submit(whole.update, view)
                    refs.append(ChunkRef(blake3.blake3(view).digest(), size, 0))
                    offset += size
                for turn, earlier in enumerate(pending):
                    if earlier is not None:
                        earlier.result()
                    pending[turn] = None
                entries.append(FileChunks(rel, refs))
                digests.append(f"blake3:{whole.hexdigest()}")
    return Sealed(Index(FORMAT, entries), digests)


def matches(index: Index, files: Sequence[ImageFile]) -> bool:
    """Whether ``index`` lists exactly these files, in this order, each at its size, every chunk of
    one no larger than any the vault cuts."""
    return len(index.files) == len(files) and all(
        entry.path == f.path
        and entry.size == f.size
        and all(0 < c.size <= chunking.MAX_CHUNK and len(c.digest) == 32 for c in entry.chunks)
        for entry, f in zip(index.files, files, strict=True)
    )


def _pread_into(fd: int, view: memoryview, offset: int, rel: str) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise StorageIOError(f"{rel} ended at {offset + done} bytes, before its size")
        done += n


def _pread_exactly(fd: int, offset: int, size: int, rel: str) -> bytes:
    data = read_at(fd, size, offset)
    if len(data) != size:
        raise StorageIOError(f"{rel} ended at {offset + len(data)} bytes, before its size")
    return data

"""Each chunk's digest of a generation, recorded by the hook as it seals it, for the vault's copier.

Where a vault is configured, the hook cuts the just-dumped generation into the chunks the vault
stores (vault/chunking.py) and hashes each one, in a thread of its own while its main thread hashes
and fsyncs the files (the fsync waits on the disk; the chunks' hashing takes a core, BLAKE3 about
0.25 s a GiB here, the image still in the page cache). It writes them beside the manifest, as the
generation's ``chunks.index`` (vault/index.py's format, every chunk's ``stored`` 0), root's 0600 in
root's 0700 folder, before the manifest and the rename that publishes both.

vault-sync then reads only the chunks its owner's store lacks (vault/chunked.py's ``cut``): a
second copy of a job that changed 5 % of its memory reads 5 % of its image instead of all of it.
This index is root's record of the generation as much as the manifest is: both are computed by
root from the same files after the dump, when no process of the job's user can reach them any more
(docs/SECURITY.md: every generation folder is root's 0700, the checkpointer's image folder reached
through a descriptor only). A chunk written to the vault is hashed again from the bytes written; a
chunk the vault already holds is not read at all.

Nothing of it can fail a checkpoint: a generation whose chunks could not be recorded in time (or at
all) is published without its index, and its copy hashes the whole image as before.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import blake3

from mom_checkpoint.image.hashing import ImageFile, open_files
from mom_checkpoint.platform.errors import Error, StorageIOError, TimedOut
from mom_checkpoint.vault import chunking, index
from mom_checkpoint.vault.index import FORMAT, ChunkRef, FileChunks, Index

WAIT_AT_LEAST_S = 1.0  # the hook waits for the chunks this long, or as long as they have taken so far


class Sealing:
    """The chunks of a generation's files (``relpaths``, below ``base``) hashed in a thread of its
    own, from the moment it is made: ``record`` waits for them and writes them down."""

    def __init__(
        self, base: Path, relpaths: Sequence[str], *, max_bytes: int | None, deadline: float | None
    ) -> None:
        self._stop = threading.Event()
        self._index: Index | None = None
        self.error: BaseException | None = None
        self._started = time.monotonic()
        arguments = (base, list(relpaths), max_bytes, deadline)
        self._thread = threading.Thread(target=self._run, args=arguments, name="seal-chunks", daemon=True)
        self._thread.start()

    def _run(self, base: Path, relpaths: list[str], max_bytes: int | None, deadline: float | None) -> None:
        try:
            self._index = chunk_index(base, relpaths, max_bytes=max_bytes, deadline=deadline, stop=self._stop)
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
        if self.error is not None or self._index is None:
            return f"{type(self.error).__name__}: {self.error}"
        if not matches(self._index, files):
            return "the chunks hashed are not those of the files the manifest lists"
        try:
            index.write(folder, self._index)
        except (Error, OSError) as exc:  # (a disk full): no index, not half of one
            with contextlib.suppress(OSError):
                os.unlink(folder / index.INDEX)
            return f"cannot write {index.INDEX}: {exc}"
        return None

    def cancel(self) -> None:
        """Stop hashing (within one chunk); nothing is waited for."""
        self._stop.set()


def chunk_index(
    base: Path,
    relpaths: Sequence[str],
    *,
    max_bytes: int | None = None,
    deadline: float | None = None,
    stop: threading.Event | None = None,
) -> Index:
    """Each file below ``base`` cut as the vault cuts it, and each chunk hashed: opened as the hook's
    own hashing opens them (hashing.open_files: no link, regular files on ``base``'s file system, the
    image bound), read through one buffer of the largest chunk (the hook's memory stays small), each
    byte once."""
    with open_files(base, relpaths, max_bytes=max_bytes) as opened:
        files = opened.files
        sizes = {rel: size for rel, _, size in files}
        descriptors = {rel: fd for rel, fd, _ in files}

        def small(rel: str) -> bytes:  # a pagemap (chunking.plan bounds what it asks for)
            return _pread_exactly(descriptors[rel], 0, sizes[rel], rel)

        plan = chunking.plan([ImageFile(rel, size, "") for rel, _, size in files], small)
        buffer = bytearray(chunking.MAX_CHUNK)
        view = memoryview(buffer)
        entries = []
        for rel, fd, _ in files:
            refs = []
            offset = 0
            for size in plan[rel]:
                if stop is not None and stop.is_set():
                    raise TimedOut(f"stopped while hashing the chunks of {rel}")
                if deadline is not None and time.monotonic() > deadline:
                    raise TimedOut(f"out of time while hashing the chunks of {rel}")
                _pread_into(fd, view[:size], offset, rel)
                refs.append(ChunkRef(blake3.blake3(view[:size]).digest(), size, 0))
                offset += size
            entries.append(FileChunks(rel, refs))
    return Index(FORMAT, entries)


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
    buffer = bytearray(size)
    _pread_into(fd, memoryview(buffer), offset, rel)
    return bytes(buffer)

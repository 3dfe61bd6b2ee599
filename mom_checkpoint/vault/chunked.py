"""A generation into the vault as chunks, and back out of it.

Into the vault (``store_chunks``), in two passes over a snapshot of the local generation:

1. every file the manifest lists is opened below the snapshot (no link followed), its size checked,
   and mapped. Its chunks are those the hook recorded when it sealed the generation (its
   ``chunks.index``, vault/seal.py), where it has them and they list exactly the manifest's files:
   nothing is read. Otherwise each file is hashed whole against the manifest (one thread) while each
   of its chunks is hashed (another): nothing is written for a file that is not what root recorded.
   The owner's store is listed once; a chunk already in it is neither read nor written again.
2. the owner's share is checked against the new chunks' bytes (nothing written when it would pass
   it); then each new chunk is hashed again from the bytes about to be written (a chunk file always
   holds its digest's bytes), compressed and written. The vault's file system is synced once at the
   end.

Then, right before the generation is published, the store is listed again: a chunk a collector
condemned meanwhile is put back, one gone is written again (``ensure_present``), and the generation
must be published within PUBLISH_WITHIN_S of that look (vault/collect.py says why that is enough).

Out of the vault (``reassemble``), into a folder of the local spool: each file from its chunks in
order (read ahead in a thread), each chunk checked against its digest as it is read, each file's
digest against the manifest; a chunk read back wrong is set aside (DamagedChunk) and the copy
refused, so the restore uses the node's own generation where it has one.
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import msgspec
from blake3 import blake3

from mom_checkpoint.image.hashing import (
    WRITE_BEHIND_WINDOW,
    ImageFile,
    algorithm_of,
    finish,
    hasher,
    write_back_starter,
)
from mom_checkpoint.image.manifest import Manifest
from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.errors import StorageIOError, VerificationFailed
from mom_checkpoint.platform.files import allow_open_files, read_at, sync_file_system, write_all
from mom_checkpoint.vault import chunking, seal
from mom_checkpoint.vault.chunks import HEADER, ChunkStore, Codec, DamagedChunk, digest_of, encode
from mom_checkpoint.vault.index import FORMAT, ChunkRef, FileChunks, Index

PUBLISH_WITHIN_S = 600.0  # from the last look at the store to the generation's publication
SMALL_FILE = 1 << 20  # a file of the generation up to this size is read, not mapped
READ_AHEAD = 8  # chunks read (and checked) ahead of the one being written, on a restore
ENCODERS = 2  # threads hashing and compressing new chunks ahead of their writing


class Sent(msgspec.Struct, frozen=True):
    """What one copy moved: its chunks, how many were new, the bytes of the image they hold, the
    bytes written to the vault for the new ones, and what was not written again."""

    chunks: int
    new_chunks: int
    image_bytes: int
    new_bytes: int  # the new chunks' bytes, as the image has them
    sent_bytes: int  # their chunk files' bytes, as written (compressed)
    deduplicated_bytes: int  # the image's bytes already in the vault
    sealed: bool = False  # its chunks as the hook recorded them: only the new ones were read

    @property
    def ratio(self) -> float:
        """How much the new chunks were compressed (their bytes / what was written)."""
        return self.new_bytes / self.sent_bytes if self.sent_bytes else 1.0


class _Piece(msgspec.Struct, frozen=True, array_like=True):
    file: int  # index into the opened files
    offset: int
    size: int


class _Opened:
    """The snapshot's files for the two passes and the last look: a small file read into memory (a
    job of a thousand threads has a thousand core images), a larger one kept open and read piece by
    piece (never mapped: a file cut short under a mapping kills its reader with SIGBUS)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.contents: list[int | bytes] = []  # a large file's descriptor, or a small one's bytes

    def add(self, path: str, fd: int, size: int) -> None:
        self.paths.append(path)
        if size > SMALL_FILE:
            self.contents.append(fd)
            return
        try:
            data = _pread_exactly(fd, 0, size, path)
        finally:
            os.close(fd)
        self.contents.append(data)

    def read(self, piece: _Piece) -> bytes:
        """The piece's bytes, all of them (VerificationFailed where its file now ends before)."""
        content = self.contents[piece.file]
        if isinstance(content, bytes):
            return content[piece.offset : piece.offset + piece.size]
        return _pread_exactly(content, piece.offset, piece.size, self.paths[piece.file])

    def close(self) -> None:
        for content in self.contents:
            if isinstance(content, int):
                os.close(content)


def _pread_exactly(fd: int, offset: int, size: int, path: str) -> bytes:
    data = read_at(fd, size, offset)
    if len(data) != size:
        raise VerificationFailed(f"{path} ended before its recorded size: not copying it")
    return data


class Chunked(msgspec.Struct, frozen=True):
    """A generation cut and hashed (pass 1): its index, and what of it is not in the store yet."""

    index: Index
    new: dict[str, _Piece]  # digest -> where its bytes are
    pieces: dict[str, _Piece]  # every chunk, by digest
    present: dict[str, int]  # the store's listing: digest -> chunk file bytes
    sealed: bool  # its chunks as the hook recorded them (vault/seal.py): only the new ones are read

    @property
    def new_bytes(self) -> int:
        return sum(p.size for p in self.new.values())


@contextlib.contextmanager
def opened_generation(source: Path, manifest: Manifest) -> Iterator[tuple[_Opened, list[ImageFile]]]:
    """Every file the manifest lists (image and kept), opened below ``source`` without following a
    link, each of its recorded size."""
    files = manifest.every_file
    allow_open_files(sum(f.size > SMALL_FILE for f in files))  # one a large file (a pages image)
    opened = _Opened()
    source_fd = safefs.open_dir(source)
    try:
        for image_file in files:
            try:
                fd, st = safefs.open_regular(image_file.path, dir_fd=source_fd)
            except FileNotFoundError:
                raise VerificationFailed(
                    f"{image_file.path} is missing: not copying this generation"
                ) from None
            if st.st_size != image_file.size:
                os.close(fd)
                raise VerificationFailed(
                    f"{image_file.path} has {st.st_size} bytes, {image_file.size} recorded: not copying it"
                )
            opened.add(image_file.path, fd, image_file.size)
        yield opened, files
    finally:
        os.close(source_fd)
        opened.close()


def cut(
    opened: _Opened,
    files: list[ImageFile],
    present: dict[str, int],
    *,
    tick: Callable[[], None],
    sealed: Index | None = None,
) -> Chunked:
    """Pass 1: each file's chunks, as the hook recorded them when it sealed the generation
    (``sealed``, used when it lists exactly ``files``: nothing read), else hashed here with each whole
    file checked against the manifest; and which of them the owner's store lacks (``present``: its
    listing)."""
    recorded = sealed is not None and seal.matches(sealed, files)
    index = sealed if sealed is not None and recorded else _hashed(opened, files, tick=tick)
    pieces: dict[str, _Piece] = {}
    new: dict[str, _Piece] = {}
    for number, entry in enumerate(index.files):
        offset = 0
        for chunk in entry.chunks:
            piece = _Piece(number, offset, chunk.size)
            pieces.setdefault(chunk.name, piece)
            if chunk.name not in present:
                new.setdefault(chunk.name, piece)
            offset += chunk.size
    return Chunked(index, new, pieces, present, recorded)


def _hashed(opened: _Opened, files: list[ImageFile], *, tick: Callable[[], None]) -> Index:
    """Each file's chunks hashed, each chunk's bytes read once and hashed into its whole file's
    digest too (in another thread), checked against the manifest: nothing is written for a file that
    is not what root recorded."""
    by_path = {f.path: n for n, f in enumerate(files)}

    def small(path: str) -> bytes:
        return opened.read(_Piece(by_path[path], 0, files[by_path[path]].size))

    plan = chunking.plan(files, small)
    entries = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vault-file-hash") as whole:
        for number, image_file in enumerate(files):
            algorithm = algorithm_of(image_file.digest)
            state = hasher(algorithm)
            hashed: Future[object] | None = None
            refs = []
            offset = 0
            for size in plan[image_file.path]:
                data = opened.read(_Piece(number, offset, size))
                if hashed is not None:
                    hashed.result()
                hashed = whole.submit(state.update, data)
                refs.append(ChunkRef(blake3(data).digest(), size, 0))
                offset += size
                tick()
            if hashed is not None:
                hashed.result()
            if finish(algorithm, state) != image_file.digest:
                raise VerificationFailed(
                    f"{image_file.path} has changed since the checkpoint (checksum mismatch)"
                )
            entries.append(FileChunks(image_file.path, refs))
    return Index(FORMAT, entries)


def write_new(
    chunked: Chunked,
    opened: _Opened,
    store: ChunkStore,
    codec: Codec,
    *,
    tick: Callable[[int], None],
    written: dict[str, int],
) -> tuple[Index, Sent]:
    """Pass 2: the new chunks written (each hashed again from the bytes written: a chunk file always
    holds its digest's bytes) under temporary names, the vault's file system synced, and only then
    each put in place and said in ``written`` (digest: its file's bytes); the index with every chunk
    file's size."""
    staged: dict[str, tuple[Path, int]] = {}
    try:
        for digest, blob in _encoded(chunked, opened, list(chunked.new), codec):
            staged[digest] = (store.stage(digest, blob), len(blob))
            tick(len(blob))
        sync_file_system(store.root)
        for digest, (temporary, size) in list(staged.items()):
            store.place(temporary, digest)
            written[digest] = size
            del staged[digest]
    finally:
        for temporary, _ in staged.values():
            store.discard(temporary)
    stored = {**chunked.present, **written}
    index = Index(
        FORMAT,
        [
            FileChunks(f.path, [ChunkRef(c.digest, c.size, stored[c.name]) for c in f.chunks])
            for f in chunked.index.files
        ],
    )
    image_bytes = sum(f.size for f in index.files)
    new_bytes = chunked.new_bytes
    sent = Sent(
        chunks=sum(len(f.chunks) for f in index.files),
        new_chunks=len(written),
        image_bytes=image_bytes,
        new_bytes=new_bytes,
        sent_bytes=sum(written.values()),
        deduplicated_bytes=sum(c.size for f in index.files for c in f.chunks if c.name not in written),
        sealed=chunked.sealed,
    )
    return index, sent


def _encoded(
    chunked: Chunked, opened: _Opened, digests: list[str], codec: Codec
) -> Iterator[tuple[str, bytes]]:
    """Each chunk file's content, in order, ENCODERS threads hashing and compressing ahead of the
    caller's writes (BLAKE3 and zstd let go of the GIL): a first copy is as fast as its disk, not as
    one core compresses."""
    with ThreadPoolExecutor(max_workers=ENCODERS, thread_name_prefix="vault-encode") as encoders:
        pending: collections.deque[tuple[str, Future[bytes]]] = collections.deque()
        for digest in digests:
            pending.append((digest, encoders.submit(encode_piece, chunked, opened, digest, codec)))
            if len(pending) > 2 * ENCODERS:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def encode_piece(chunked: Chunked, opened: _Opened, digest: str, codec: Codec) -> bytes:
    """The chunk file of one of the generation's chunks, its bytes checked against its digest again
    (a chunk file always holds its digest's bytes)."""
    data = opened.read(chunked.pieces[digest])
    if digest_of(data) != digest:
        raise VerificationFailed(f"{digest}: the image changed while it was copied: not copying it")
    return encode(data, codec)


def ensure_present(
    chunked: Chunked, opened: _Opened, store: ChunkStore, codec: Codec, *, tick: Callable[[int], None]
) -> float:
    """The last look before publishing: every chunk the index names is in the store (put back from
    the condemned, or written again), looked at again after any had to be written. Returns when the
    last look began (monotonic): the generation must be published within PUBLISH_WITHIN_S of it."""
    while True:
        looked = time.monotonic()
        there = store.listing()
        wrote = False
        for digest in sorted(chunked.index.digests()):
            if digest in there or store.resurrect(digest):
                continue
            blob = encode_piece(chunked, opened, digest, codec)
            store.write(digest, blob)
            wrote = True
            tick(len(blob))
        if not wrote:
            return looked


def check_publish_time(looked: float) -> None:
    if time.monotonic() - looked > PUBLISH_WITHIN_S:
        raise StorageIOError(
            f"the copy stalled for more than {PUBLISH_WITHIN_S:.0f} s after its last look at the chunks: "
            f"not publishing it (the next vault-sync copies it again)"
        )


# -- out of the vault ---------------------------------------------------------------------------------
def reassemble(
    generation: Path,
    index: Index,
    manifest: Manifest,
    store: ChunkStore,
    target: Path,
    *,
    file_mode: int,
    deadline: float | None,
) -> None:
    """Every file of a chunked vault generation written into the new folder ``target`` from its
    chunks, checked chunk by chunk and file by file; VerificationFailed on any difference."""
    files = manifest.every_file
    listed = {f.path: f for f in index.files}
    if sorted(listed) != sorted(f.path for f in files) or len(listed) != len(index.files):
        raise VerificationFailed(f"{generation}: its index does not list the files of its manifest")
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="vault-read") as readers:
        for image_file in files:
            entry = listed[image_file.path]
            if entry.size != image_file.size:
                raise VerificationFailed(f"{generation}: its index gives {image_file.path} another size")
            _reassemble_file(generation, entry, image_file, store, target, readers=readers,
                             file_mode=file_mode, deadline=deadline)  # fmt: skip


def _reassemble_file(
    generation: Path,
    entry: FileChunks,
    image_file: ImageFile,
    store: ChunkStore,
    target: Path,
    *,
    readers: ThreadPoolExecutor,
    file_mode: int,
    deadline: float | None,
) -> None:
    """One file from its chunks (each checked against its digest and size as it is read ahead),
    hashed as written against the manifest, its write-back started as it goes so that the fsync at
    its end finds little left to write."""
    destination = target / image_file.path
    destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = file_mode if not image_file.path.startswith("kept/") else 0o600
    out = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    write_back = write_back_starter() if image_file.size > WRITE_BEHIND_WINDOW else None
    try:
        if mode != 0o600:
            os.fchmod(out, mode)
        algorithm = algorithm_of(image_file.digest)
        state = hasher(algorithm)
        written = started = 0
        for data in _read_ahead(store, entry, readers, generation):
            if deadline is not None and time.monotonic() > deadline:
                raise StorageIOError(f"copying {image_file.path} out of the vault did not finish in time")
            state.update(data)
            write_all(out, data)
            written += len(data)
            if write_back is not None and written - started >= WRITE_BEHIND_WINDOW:
                write_back(out, started, written - started)
                started = written
        os.fsync(out)
    finally:
        os.close(out)
    if finish(algorithm, state) != image_file.digest:
        raise VerificationFailed(
            f"{generation}: {image_file.path} has changed since the checkpoint (checksum mismatch)"
        )


def check(
    generation: Path,
    index: Index,
    manifest: Manifest,
    store: ChunkStore,
    *,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Read every chunk of a vault generation back, each checked against its digest and each file
    against the manifest (nothing written): the digests of the chunks that are missing or damaged
    (those are set aside), empty when the generation is whole. VerificationFailed when its index does
    not match its manifest or a file's chunks, each sound, do not make the recorded file."""
    files = manifest.every_file
    listed = {f.path: f for f in index.files}
    if sorted(listed) != sorted(f.path for f in files) or len(listed) != len(index.files):
        raise VerificationFailed(f"{generation}: its index does not list the files of its manifest")
    bad: list[str] = []
    for image_file in files:
        entry = listed[image_file.path]
        algorithm = algorithm_of(image_file.digest)
        state = hasher(algorithm)
        whole = True
        for chunk in entry.chunks:
            try:
                data = store.read(chunk.name, chunk.size)
            except (FileNotFoundError, DamagedChunk):
                bad.append(chunk.name)
                whole = False
                continue
            state.update(data)
            if progress is not None:
                progress(len(data))
        if whole and (entry.size != image_file.size or finish(algorithm, state) != image_file.digest):
            raise VerificationFailed(f"{generation}: {image_file.path} is not what the manifest records")
    return sorted(set(bad))


def _read_ahead(
    store: ChunkStore, entry: FileChunks, readers: ThreadPoolExecutor, generation: Path
) -> Iterator[bytes | memoryview]:
    """The file's chunks in order, up to READ_AHEAD of them read and checked ahead."""
    pending = []
    chunks = iter(entry.chunks)
    for chunk in chunks:
        pending.append(readers.submit(_read_chunk, store, chunk, generation, entry.path))
        if len(pending) >= READ_AHEAD:
            break
    while pending:
        data = pending.pop(0).result()
        for chunk in chunks:
            pending.append(readers.submit(_read_chunk, store, chunk, generation, entry.path))
            break
        yield data


def _read_chunk(store: ChunkStore, chunk: ChunkRef, generation: Path, path: str) -> bytes | memoryview:
    try:
        data = store.read(chunk.name, chunk.size)
    except FileNotFoundError:
        raise VerificationFailed(
            f"{generation}: chunk {chunk.name} of {path} is missing from the vault: refusing this copy"
        ) from None
    except DamagedChunk as exc:
        raise VerificationFailed(f"{generation}: {exc.message} ({path}): refusing this copy") from None
    except OSError as exc:
        raise StorageIOError(f"{generation}: cannot read chunk {chunk.name}: {exc.strerror}") from None
    if len(data) != chunk.size:
        raise VerificationFailed(f"{generation}: chunk {chunk.name} of {path} has another size")
    return data


__all__ = [
    "HEADER", "Sent", "check", "cut", "encode_piece", "ensure_present", "opened_generation", "reassemble",
    "write_new",
]  # fmt: skip

"""A vault generation's index: which chunks, in which order, make each file the manifest lists.

    <vault_dir>/<system>.<uid>.<job id>/<number>-<UTC time>/
        chunks.index        this index (msgpack, root's 0600), written before the manifest
        manifest.json       root's manifest, exactly as in the spool, written last

A generation stored this way holds no image file of its own: its files are its owner's chunks
(vault/chunks.py), each listed here with its digest, its size, and the size of its chunk file. A
generation of the vault's first layout (a full copy: image/ and kept/ beside the manifest) has no
index, and is read as before.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.errors import Error, StorageIOError, VerificationFailed
from mom_checkpoint.platform.files import read_at, write_all

INDEX = "chunks.index"
FORMAT = 1
MAX_BYTES = 256 << 20  # 64 bytes or less a chunk: far more chunks than any image has
MAX_CHUNK_BYTES = 16 << 20  # chunks.MAX_SIZE


class ChunkRef(msgspec.Struct, frozen=True, array_like=True):
    digest: bytes  # BLAKE3, 32 bytes
    size: int  # the chunk's bytes
    stored: int  # its chunk file's bytes (what it holds of the vault)

    @property
    def name(self) -> str:
        return self.digest.hex()


class FileChunks(msgspec.Struct, frozen=True, array_like=True):
    path: str  # as the manifest lists it (image/..., kept/...)
    chunks: list[ChunkRef]

    @property
    def size(self) -> int:
        return sum(c.size for c in self.chunks)


class Index(msgspec.Struct, frozen=True):
    format: int
    files: list[FileChunks]

    def digests(self) -> set[str]:
        return {c.name for f in self.files for c in f.chunks}

    def stored(self) -> dict[str, int]:
        """Each distinct chunk's stored bytes."""
        return {c.name: c.stored for f in self.files for c in f.chunks}


def write(folder: Path, index: Index) -> None:
    data = msgspec.msgpack.encode(index)
    if len(data) > MAX_BYTES:  # it could not be read back: the copy is refused instead
        raise StorageIOError(f"the index of {folder.name} would be {len(data)} bytes, more than any is read")
    fd = os.open(folder / INDEX, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def has_index(generation: Path) -> bool:
    """Whether a vault generation is stored as chunks. An index that cannot be looked at (an I/O
    error, a stale handle) is an error, never taken for "no index"."""
    try:
        os.lstat(generation / INDEX)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageIOError(f"{generation}: cannot look at its index: {exc.strerror}") from None
    return True


def is_full_copy(generation: Path) -> bool:
    """Whether a vault generation without an index is one of the vault's first layout (its image
    beside its manifest): anything else is neither, and nothing is decided from it."""
    try:
        return os.path.isdir(generation / "image") and not has_index(generation)
    except OSError as exc:
        raise StorageIOError(f"{generation}: cannot look at it: {exc.strerror}") from None


def read(generation: Path) -> Index:
    """The index of a vault generation, root's and readable by root alone like its manifest; refused
    when it cannot be read as one (VerificationFailed)."""
    path = generation / INDEX
    try:
        fd, st = safefs.open_regular(path, max_bytes=MAX_BYTES)
    except (OSError, Error) as exc:
        raise VerificationFailed(f"{path}: cannot read the index: {exc}") from None
    try:
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise VerificationFailed(f"{path} is not root's own index: refusing it")
        data = read_at(fd, st.st_size)
    finally:
        os.close(fd)
    try:
        index = msgspec.msgpack.decode(data, type=Index)
    except msgspec.DecodeError as exc:  # cut short, garbled, or not of this shape
        raise VerificationFailed(f"{path} is not an index of chunks: {exc}") from None
    if index.format != FORMAT:
        raise VerificationFailed(f"{path}: index format {index.format}, this mom-checkpoint reads {FORMAT}")
    for entry in index.files:
        for chunk in entry.chunks:
            if len(chunk.digest) != 32 or not 0 <= chunk.size <= MAX_CHUNK_BYTES or chunk.stored < 0:
                raise VerificationFailed(f"{path}: a chunk of {entry.path[:200]!r} is not one")
    return index

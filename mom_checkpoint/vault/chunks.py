"""One owner's chunks in the vault: each piece of their images stored once, under the BLAKE3 digest of
its bytes, compressed.

    <vault_dir>/.chunks/<uid>/          root's 0700: one owner's chunks, never another's
        <hh>/<digest>                   a chunk (hh: the digest's first two hex digits)
        .condemned/<digest>             no complete generation referenced it when the collector
                                        last looked: removed CONDEMNED_S later unless one does again
        .damaged/<digest>               read back wrong (verify --vault, a restore): set aside, so that
                                        the next vault-sync that has its bytes writes it again
        .collect/                       the collector's lock (vault/collect.py)

Chunks are never shared between owners: whether a chunk is already in the vault must tell no user
anything about another user's memory, so each owner's store is looked at alone.

A chunk file: a header (magic, format, codec, the chunk's size and the stored payload's size) and the
payload: the bytes compressed with zstd (level 1 unless configured), or as they are when compression
would save under 5 % (most chunks of numpy's floating-point arrays, docs/VAULT.md). A chunk is written under a
temporary name and renamed into place, so a chunk file under a digest's name is whole; whether its
bytes are those of the digest is checked each time it is read.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import struct
import time
from pathlib import Path

import blake3
import msgspec

from mom_checkpoint.platform.errors import StorageIOError, VerificationFailed
from mom_checkpoint.platform.files import check_private_dir, read_at, write_all

CHUNKS = ".chunks"
CONDEMNED = ".condemned"
DAMAGED = ".damaged"
TEMPORARY = ".tmp-"
SINCE = "SINCE"  # in .chunks/: made with the vault's first store; its mtime is when
MAGIC = b"MCKC"
FORMAT = 1
HEADER = struct.Struct("<4sBBHII")  # magic, format, codec, 0, chunk size, payload size
RAW, ZSTD = 0, 2
WORTH = 0.95  # compressed to more than this share of its size: stored as it is
MAX_SIZE = 16 << 20  # no chunk is larger (chunking's MAX_CHUNK is far below)
BLOCK = 4096  # what the smallest file takes of a file system, counted against the owner
DAMAGED_KEPT_S = 30 * 86400  # a chunk set aside as damaged is removed after this
_names = itertools.count()


class DamagedChunk(VerificationFailed):
    """A chunk file that is not what its digest names: cut short, changed, or not a chunk at all."""


class Codec(msgspec.Struct, frozen=True):
    """How new chunks are stored: ``name`` (zstd or none) at ``level`` (zstd's: -7 fastest .. 19)."""

    name: str = "zstd"
    level: int = 1


def encode(data: bytes | memoryview, codec: Codec) -> bytes:
    """A chunk file's content for ``data``."""
    payload: bytes | memoryview = data
    kind = RAW
    if codec.name == "zstd" and len(data):
        import zstandard

        packed = zstandard.ZstdCompressor(level=codec.level).compress(data)
        if len(packed) < WORTH * len(data):
            payload, kind = packed, ZSTD
    return HEADER.pack(MAGIC, FORMAT, kind, 0, len(data), len(payload)) + bytes(payload)


def decode(blob: bytes, digest: str) -> bytes | memoryview:
    """A chunk's bytes from its file's content (a chunk stored as it is: a view of ``blob``, not a
    copy), checked against the digest that names it."""
    if len(blob) < HEADER.size:
        raise DamagedChunk(f"chunk {digest} is cut short")
    magic, version, kind, _, size, stored = HEADER.unpack_from(blob)
    if magic != MAGIC or version != FORMAT or kind not in (RAW, ZSTD) or stored != len(blob) - HEADER.size:
        raise DamagedChunk(f"chunk {digest} is not a chunk file of this format")
    if size > MAX_SIZE:
        raise DamagedChunk(f"chunk {digest} claims {size} bytes")
    payload = memoryview(blob)[HEADER.size :]
    import zstandard

    data: bytes | memoryview
    try:
        if kind == ZSTD:
            # the frame's own size first: decompress() would allocate whatever a damaged frame says
            if zstandard.frame_content_size(payload) != size:
                raise DamagedChunk(f"chunk {digest}: its frame does not hold {size} bytes")
            data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
        else:
            data = payload
    except (zstandard.ZstdError, MemoryError) as exc:
        raise DamagedChunk(f"chunk {digest} cannot be decompressed: {exc}") from None
    if len(data) != size or blake3.blake3(data).hexdigest() != digest:
        raise DamagedChunk(f"chunk {digest} does not hold the bytes of its digest")
    return data


def digest_of(data: bytes | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


class Survey(msgspec.Struct, frozen=True):
    present: dict[str, int]  # the chunks in place: {digest: file size} (ChunkStore.listing)
    # every file of the owner's store (in place, condemned, set aside, being written), each counted
    # at least one block (BLOCK): a chunk that compresses to a few bytes still takes a block and an
    # inode
    held: int


class ChunkStore:
    """The chunks of one owner (``uid``) in the vault at ``vault_root``."""

    def __init__(self, vault_root: Path, uid: int) -> None:
        self.uid = uid
        self.root = Path(vault_root, CHUNKS, str(uid))

    def open(self) -> None:
        """Make the owner's store (root's, 0700) if it is not there yet; the first store of a vault
        records when the vault went to chunks (``.chunks/SINCE``: doctor's mark for nodes that still
        write full copies)."""
        for folder in (self.root.parent, self.root, self.root / CONDEMNED, self.root / DAMAGED):
            try:
                folder.mkdir(mode=0o700)
            except FileExistsError:
                pass
            else:
                if folder == self.root.parent:
                    with contextlib.suppress(FileExistsError):
                        os.close(os.open(folder / SINCE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            check_private_dir(folder, 0o700)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    # -- what is there ---------------------------------------------------------------------------------
    def listing(self) -> dict[str, int]:
        """Every chunk in the store (not condemned nor damaged): {digest: file size}. A file shorter
        than a chunk's header was cut short (a crash): absent, so a copy writes it again."""
        return {digest: st.st_size for digest, st in self._in_place() if st.st_size >= HEADER.size}

    def times(self) -> dict[str, float]:
        """Every chunk in place: {digest: its mtime (when it was written)}."""
        return {digest: st.st_mtime for digest, st in self._in_place()}

    def _in_place(self) -> list[tuple[str, os.stat_result]]:
        found = []
        for folder in entries(self.root):
            if len(folder.name) != 2 or not folder.is_dir(follow_symlinks=False):
                continue
            for entry in entries(Path(folder.path)):
                if _is_digest(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        found.append((entry.name, entry.stat(follow_symlinks=False)))
        return found

    def survey(self) -> Survey:
        """The chunks in place (``listing``'s) and what the store holds (``Survey.held``), in one
        walk of it: over a network file system each folder listed is a round trip to the server."""
        present: dict[str, int] = {}
        total = 0
        for folder, _, names in os.walk(self.root):  # (no link followed)
            in_place = os.path.dirname(folder) == str(self.root) and len(os.path.basename(folder)) == 2
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(os.path.join(folder, name))
                    total += max(st.st_blocks * 512, st.st_size, BLOCK)
                    if in_place and _is_digest(name) and st.st_size >= HEADER.size:
                        present[name] = st.st_size
        return Survey(present, total)

    def condemned(self) -> dict[str, float]:
        """Chunks condemned by a collector: {digest: when (its mtime, set when it was condemned)}."""
        found: dict[str, float] = {}
        for entry in entries(self.root / CONDEMNED):
            if _is_digest(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    found[entry.name] = entry.stat(follow_symlinks=False).st_mtime
        return found

    # -- writing ---------------------------------------------------------------------------------------
    def stage(self, digest: str, blob: bytes) -> Path:
        """A chunk file written under a temporary name beside its place: nobody takes it for a chunk
        before ``place`` (call that only once the file system has been synced: a name in place is a
        promise that the bytes are durable, on every node that lists it)."""
        folder = self.root / digest[:2]
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        temporary = folder / f"{TEMPORARY}{socket.gethostname()}.{os.getpid()}.{next(_names)}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # a killed copier's of the same pid (the pid was reused)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, blob)
        except BaseException:
            os.close(fd)
            self.discard(temporary)
            raise
        os.close(fd)
        return temporary

    def place(self, temporary: Path, digest: str) -> None:
        os.rename(temporary, self.path(digest))

    def discard(self, temporary: Path) -> None:
        with contextlib.suppress(OSError):
            os.unlink(temporary)

    def write(self, digest: str, blob: bytes) -> None:
        """One chunk file put in place durably (its bytes fsync'd before its name appears)."""
        temporary = self.stage(digest, blob)
        try:
            fd = os.open(temporary, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self.place(temporary, digest)
        except BaseException:
            self.discard(temporary)
            raise

    def resurrect(self, digest: str) -> bool:
        """A condemned chunk that a generation references after all, put back; whether it was there."""
        try:
            os.rename(self.root / CONDEMNED / digest, self.path(digest))
        except FileNotFoundError:
            return False
        return True

    def condemn(self, digest: str) -> None:
        """Move an unreferenced chunk aside, its mtime the moment it was condemned (this node's clock,
        set before the move: a chunk is never condemned with its old time, whenever this is killed)."""
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(digest), (now, now))
            os.rename(self.path(digest), self.root / CONDEMNED / digest)

    def set_aside(self, digest: str) -> None:
        """A chunk read back wrong: out of the store (kept for inspection), so that a sync writes it
        again and a reader looks no further."""
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path(digest), self.root / DAMAGED / f"{digest}.{int(time.time())}")

    def remove_leftovers(self, now: float) -> None:
        """Temporaries of killed copiers (a day old) and chunks set aside as damaged (kept
        DAMAGED_KEPT_S for inspection)."""
        for folder in entries(self.root):
            if len(folder.name) == 2 and folder.is_dir(follow_symlinks=False):
                for entry in entries(Path(folder.path)):
                    if entry.name.startswith(TEMPORARY):
                        with contextlib.suppress(OSError):
                            if now - entry.stat(follow_symlinks=False).st_mtime > 86400:
                                os.unlink(entry.path)
        for entry in entries(self.root / DAMAGED):
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > DAMAGED_KEPT_S:
                    os.unlink(entry.path)

    def remove_condemned(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / CONDEMNED / digest)

    # -- reading ---------------------------------------------------------------------------------------
    def read(self, digest: str, limit: int) -> bytes | memoryview:
        """A chunk's bytes (from its place, or condemned meanwhile), checked against its digest; a
        chunk read back wrong is set aside (DamagedChunk), a missing one raises FileNotFoundError."""
        for path in (self.path(digest), self.root / CONDEMNED / digest):
            try:
                blob = _read_at_most(path, limit + HEADER.size)
            except FileNotFoundError:
                continue
            try:
                return decode(blob, digest)
            except DamagedChunk:
                if path == self.path(digest):
                    self.set_aside(digest)
                raise
        raise FileNotFoundError(f"chunk {digest} is not in {self.root}")


def _read_at_most(path: Path, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        blob = read_at(fd, limit + 1)
    finally:
        os.close(fd)
    if len(blob) > limit:
        raise DamagedChunk(f"{path.name} is larger than any chunk")
    return blob


def entries(folder: Path) -> list[os.DirEntry[str]]:
    """A folder's entries (none when it is not there)."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageIOError(f"cannot list {folder}: {exc.strerror}") from None


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)

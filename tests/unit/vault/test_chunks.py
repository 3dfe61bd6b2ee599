"""The vault's chunks: where a file is cut (by the pagemap's address windows), a chunk file's format
and its checks, the index, and the collector's plan."""

from __future__ import annotations

import os
import time
from pathlib import Path

import blake3
import pytest

from mom_checkpoint.image.criu_images import (
    PAGE,
    PE_PARENT,
    PE_PRESENT,
    ImageError,
    Pagemap,
    read_pagemap,
)
from mom_checkpoint.image.hashing import ImageFile
from mom_checkpoint.platform.errors import StorageIOError, VerificationFailed
from mom_checkpoint.vault import chunking, collect
from mom_checkpoint.vault import index as vault_index
from mom_checkpoint.vault.chunks import HEADER, RAW, ZSTD, ChunkStore, Codec, DamagedChunk, decode
from mom_checkpoint.vault.chunks import encode as encode_chunk
from tests.criu_forge import pagemap_image

MIB = 1 << 20


def _pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    out, offset = [], 0
    for size in sizes:
        out.append(data[offset : offset + size])
        offset += size
    return out


def test_the_pagemap_says_which_runs_of_pages_the_pages_file_holds() -> None:
    image = pagemap_image(
        7,
        [
            [(1, 0x400000), (2, 3), (4, PE_PRESENT)],
            [(1, 0x800000), (2, 2), (3, 1)],  # in the parent image (no flags): not in this file
            [(1, 0x900000), (2, 0), (5, 300)],  # nr_pages in its 64-bit field
            [(1, 0xA00000), (2, 1)],  # no flags: present
            [(1, 0xB00000), (2, 1), (4, PE_PARENT)],
        ],
    )
    pagemap = read_pagemap(image, 304)
    assert pagemap == Pagemap(7, [(0x400000, 3), (0x900000, 300), (0xA00000, 1)])
    assert pagemap.pages_file == "pages-7.img" and pagemap.size == 304 * PAGE
    for pages in (303, 305):  # a pagemap is read only as one of exactly its pages file's pages
        with pytest.raises(ImageError):
            read_pagemap(image, pages)


def test_a_pagemap_costs_no_more_than_its_pages_file_is_worth() -> None:
    """A job user's pagemap (their CRIU wrote it in job-user mode) claiming 2**50 pages, or a million
    empty entries, is read only as far as the pages file it names allows: fixed pieces, at once."""
    claims = pagemap_image(1, [[(1, 0x400000), (2, 0), (4, PE_PRESENT), (5, 1 << 50)]])
    empties = pagemap_image(1, [[(1, 0), (2, 0), (4, PE_PARENT)]] * 1_000_000)
    for pagemap in (claims, empties):
        files = [
            ImageFile("image/pagemap-9.img", len(pagemap), ""),
            ImageFile("image/pages-1.img", 8 * MIB, ""),
        ]
        started = time.process_time()
        plan = chunking.plan(files, {"image/pagemap-9.img": pagemap}.__getitem__)
        assert plan["image/pages-1.img"] == chunking.fixed(8 * MIB)
        assert time.process_time() - started < 5, "the pagemap was read past its pages file's worth"


def test_pages_are_cut_by_their_address_windows_and_a_new_mapping_moves_no_other_chunk() -> None:
    before = Pagemap(1, [(0x400000, 512), (0x10000000, 256)])  # 2 MiB, then 1 MiB elsewhere
    assert chunking.by_window(before) == [MIB, MIB, MIB]
    after = Pagemap(1, [(0x400000, 512), (0x8000000, 128), (0x10000000, 256)])  # 512 KiB mapped between
    assert chunking.by_window(after) == [MIB, MIB, 128 * PAGE, MIB]
    old = os.urandom(3 * MIB)
    new = old[: 2 * MIB] + os.urandom(128 * PAGE) + old[2 * MIB :]
    unchanged = set(_pieces(old, chunking.by_window(before))) & set(_pieces(new, chunking.by_window(after)))
    assert len(unchanged) == 3  # every chunk of the first image is a chunk of the second
    # a mapping under MIN_CHUNK joins the next window's chunk: that one chunk changes, no other
    small = Pagemap(1, [(0x400000, 512), (0x8000000, 16), (0x10000000, 256)])
    assert chunking.by_window(small) == [MIB, MIB, 16 * PAGE + MIB]
    new = old[: 2 * MIB] + os.urandom(16 * PAGE) + old[2 * MIB :]
    assert (
        len(set(_pieces(old, chunking.by_window(before))) & set(_pieces(new, chunking.by_window(small)))) == 2
    )


def test_no_pagemap_makes_chunks_of_a_page_or_of_a_whole_file() -> None:
    scattered = Pagemap(1, [(i * 2 * MIB, 1) for i in range(5000)])  # a page in each of 5000 windows
    sizes = chunking.by_window(scattered)
    assert sum(sizes) == 5000 * PAGE and all(s >= chunking.MIN_CHUNK for s in sizes[:-1])
    same_place = Pagemap(1, [(0x400000, 256)] * 40)  # one window named again and again
    sizes = chunking.by_window(same_place)
    assert sum(sizes) == 40 * MIB and max(sizes) <= chunking.MAX_CHUNK


def test_a_pagemap_that_does_not_account_for_the_file_gives_fixed_pieces() -> None:
    pagemap = pagemap_image(1, [[(1, 0x400000), (2, 300), (4, PE_PRESENT)]])
    files = [
        ImageFile("image/pagemap-42.img", len(pagemap), ""),
        ImageFile("image/pages-1.img", 300 * PAGE, ""),
        ImageFile("image/core-42.img", 3000, ""),
        ImageFile("image/empty.img", 0, ""),
        ImageFile("kept/held-0", 3 * MIB + 5, ""),
    ]
    read = {"image/pagemap-42.img": pagemap}.__getitem__
    plan = chunking.plan(files, read)
    assert plan["image/pages-1.img"] == [MIB, 300 * PAGE - MIB]
    assert plan["image/core-42.img"] == [3000] and plan["image/empty.img"] == []
    assert plan["kept/held-0"] == [MIB, MIB, MIB, 5]
    files[1] = ImageFile("image/pages-1.img", 301 * PAGE, "")  # a page more than the pagemap says
    assert chunking.plan(files, read)["image/pages-1.img"] == [MIB, 301 * PAGE - MIB]
    assert chunking.plan(files, lambda _: b"not a pagemap")["image/pages-1.img"] == chunking.fixed(301 * PAGE)


def test_a_chunk_file_is_compressed_only_when_it_pays_and_checked_whenever_it_is_read() -> None:
    text = b"the job's heap " * 70_000
    noise = os.urandom(MIB)
    for data, kind in ((text, ZSTD), (noise, RAW), (b"", RAW)):
        digest = blake3.blake3(data).hexdigest()
        blob = encode_chunk(data, Codec())
        assert HEADER.unpack_from(blob)[2] == kind
        assert decode(blob, digest) == data
    assert len(encode_chunk(text, Codec())) < len(text) // 20
    assert HEADER.unpack_from(encode_chunk(text, Codec("none")))[2] == RAW
    digest = blake3.blake3(text).hexdigest()
    flipped = bytearray(encode_chunk(text, Codec()))
    flipped[len(flipped) // 2] ^= 0x01
    with pytest.raises(DamagedChunk):
        decode(bytes(flipped), digest)
    with pytest.raises(DamagedChunk, match=r"cut short|not a chunk file"):
        decode(encode_chunk(text, Codec())[:-3], digest)
    with pytest.raises(DamagedChunk, match="does not hold the bytes of its digest"):
        decode(encode_chunk(noise, Codec()), digest)


def test_one_walk_of_a_store_says_what_is_in_it_and_what_it_holds(tmp_path: Path) -> None:
    """What a copy looks at before writing (ChunkStore.survey): the chunks in place as listing()
    has them, and every file of the store counted, each at a block at least, condemned, set aside
    and half-written ones too."""
    (tmp_path / "vault").mkdir(mode=0o700)
    store = ChunkStore(tmp_path / "vault", 1001)
    store.open()
    blobs = [os.urandom(n) for n in (300_000, 200_000, 100, 5000)]
    digests = [blake3.blake3(b).hexdigest() for b in blobs]
    for digest, blob in zip(digests, blobs, strict=True):
        store.write(digest, encode_chunk(blob, Codec("none")))
    store.condemn(digests[1])
    store.set_aside(digests[2])
    store.stage(digests[3][:60] + "0000", b"a copy under way")
    (store.root / digests[3][:2] / ("0" * 64)).write_bytes(b"cut")  # shorter than a header: absent
    survey = store.survey()
    assert survey.present == store.listing() == {digests[0]: 300_000 + HEADER.size, digests[3]: 5016}
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert len(files) == 6
    assert survey.held == sum(max(p.stat().st_blocks * 512, p.stat().st_size, 4096) for p in files)
    assert survey.held >= 300_000 + 200_000 + 4 * 4096


def test_a_damaged_chunk_is_set_aside_and_a_condemned_one_still_read(tmp_path: Path) -> None:
    (tmp_path / "vault").mkdir(mode=0o700)
    store = ChunkStore(tmp_path / "vault", 1001)
    store.open()
    data = os.urandom(200_000)
    digest = blake3.blake3(data).hexdigest()
    store.write(digest, encode_chunk(data, Codec()))
    assert store.listing() == {digest: 200_000 + HEADER.size}
    assert store.read(digest, len(data)) == data
    store.condemn(digest)
    assert store.listing() == {} and list(store.condemned()) == [digest]
    assert store.read(digest, len(data)) == data  # a reader looks among the condemned
    assert store.resurrect(digest) and store.listing() == {digest: 200_000 + HEADER.size}
    with open(store.path(digest), "r+b") as fh:
        fh.seek(100_000)
        fh.write(b"\xff\x00")
    with pytest.raises(DamagedChunk):
        store.read(digest, len(data))
    assert store.listing() == {} and [p.name.split(".")[0] for p in (store.root / ".damaged").iterdir()] == [
        digest
    ]
    with pytest.raises(FileNotFoundError):
        store.read(digest, len(data))


def test_the_index_is_roots_own_and_read_only_as_one(tmp_path: Path) -> None:
    index = vault_index.Index(
        vault_index.FORMAT,
        [vault_index.FileChunks("image/pages-1.img", [vault_index.ChunkRef(b"\x01" * 32, 4096, 100)])],
    )
    vault_index.write(tmp_path, index)
    assert vault_index.read(tmp_path) == index and index.digests() == {"01" * 32}
    os.chmod(tmp_path / vault_index.INDEX, 0o644)
    with pytest.raises(VerificationFailed, match="not root's own index"):
        vault_index.read(tmp_path)
    (tmp_path / vault_index.INDEX).unlink()
    (tmp_path / vault_index.INDEX).write_bytes(b"\x93garbage")
    os.chmod(tmp_path / vault_index.INDEX, 0o600)
    with pytest.raises(VerificationFailed, match="not an index of chunks"):
        vault_index.read(tmp_path)


def test_the_collector_condemns_first_and_removes_only_after_the_wait() -> None:
    now = 1_000_000.0
    plan = collect.plan(
        referenced={"a", "b", "c"},
        present={"a": now - 99, "d": now - 99, "g": now - 5},
        condemned={"b": now - 10, "e": now - collect.CONDEMNED_S - 1, "f": now - 10},
        now=now,
        fresh_since=now - 30,  # a copy began 30 s ago: what it wrote since is its generation's
    )
    assert plan.condemn == ["d"]  # in place, referenced by none, older than any running copy
    assert plan.restore == ["b"]  # condemned, referenced again: back in place
    assert plan.remove == ["e"]  # condemned long enough, still referenced by none
    assert plan.waiting == ["f"]


def _store_with(tmp_path: Path, count: int) -> tuple[ChunkStore, dict[str, bytes]]:
    (tmp_path / "vault").mkdir(mode=0o700)
    store = ChunkStore(tmp_path / "vault", 1001)
    store.open()
    chunks = {}
    for _ in range(count):
        data = os.urandom(10_000)
        digest = blake3.blake3(data).hexdigest()
        store.write(digest, encode_chunk(data, Codec()))
        chunks[digest] = data
    return store, chunks


def test_a_collection_removes_nothing_a_complete_generation_references(tmp_path: Path) -> None:
    store, chunks = _store_with(tmp_path, 4)
    kept, dropped = sorted(chunks)[:2], sorted(chunks)[2:]
    first = collect.collect(store, set(kept), started=time.time())
    assert (first.condemned, first.removed) == (2, 0) and sorted(store.listing()) == kept
    assert not collect.due(store) and collect.due(store, now=time.time() + collect.COLLECT_EVERY_S)
    # one of the condemned is referenced again (a copy published meanwhile): it comes back; the
    # other waits out CONDEMNED_S from when it was condemned
    later = collect.collect(store, {*kept, dropped[0]}, started=time.time())
    assert (later.restored, later.removed, later.condemned) == (1, 0, 0)
    old = time.time() - collect.CONDEMNED_S - 10
    os.utime(store.root / ".condemned" / dropped[1], (old, old))
    last = collect.collect(store, {*kept, dropped[0]}, started=time.time())
    assert (last.removed, last.removed_bytes) == (1, 10_000 + HEADER.size)
    assert sorted(store.listing()) == sorted([*kept, dropped[0]]) and store.condemned() == {}
    for digest in store.listing():
        assert store.read(digest, 10_000) == chunks[digest]


def test_a_running_copys_chunks_are_not_condemned_and_a_lost_lock_removes_nothing(tmp_path: Path) -> None:
    store, chunks = _store_with(tmp_path, 2)
    with collect.lease(store):  # a copy that began before these chunks were written
        data = os.urandom(5_000)
        store.write(blake3.blake3(data).hexdigest(), encode_chunk(data, Codec()))
        olds = time.time() - 3 * collect.CLOCK_MARGIN_S
        for digest in chunks:  # written before the copy began
            os.utime(store.path(digest), (olds, olds))
        during = collect.collect(store, set(), started=time.time())
        assert during.condemned == 2 and list(store.listing()) == [blake3.blake3(data).hexdigest()]
    after = collect.collect(store, set(), started=time.time())
    assert after.condemned == 1 and store.listing() == {}
    old = time.time() - collect.CONDEMNED_S - 10
    for condemned in (store.root / ".condemned").iterdir():
        os.utime(condemned, (old, old))

    def lost() -> None:
        raise VerificationFailed("the lock was taken over")

    with pytest.raises(VerificationFailed):
        collect.collect(store, set(), started=time.time(), check=lost)
    assert len(store.condemned()) == 3, "a collector that lost its lock removed chunks"
    stale = collect.collect(store, set(), started=time.time() - collect.COLLECT_WITHIN_S - 1)
    assert stale.removed == 0 and len(store.condemned()) == 3, "a stalled collection removed chunks"


def test_a_generation_the_collector_cannot_read_stops_it(tmp_path: Path) -> None:
    strange = tmp_path / "000001-20261130T100001Z"
    strange.mkdir()
    (strange / "manifest.json").write_text("{}")
    with pytest.raises(StorageIOError, match="neither chunks nor a full copy"):
        collect.referenced_by([strange])
    (strange / vault_index.INDEX).write_bytes(b"\x92\x01")  # cut short
    os.chmod(strange / vault_index.INDEX, 0o600)
    with pytest.raises(VerificationFailed, match="not an index of chunks"):
        collect.referenced_by([strange])
    (strange / vault_index.INDEX).unlink()
    (strange / "image").mkdir()
    assert collect.referenced_by([strange]) == set()  # a full copy references no chunk


def test_a_damaged_frame_cannot_make_a_reader_allocate_what_it_claims() -> None:
    import zstandard

    size = 1 << 20
    data = b"the job's heap " * (size // 15)
    digest = blake3.blake3(data).hexdigest()
    blob = bytearray(encode_chunk(data, Codec()))
    payload = zstandard.ZstdCompressor(level=1).compress(b"\0" * (64 << 20))  # claims 64 MiB
    forged = HEADER.pack(b"MCKC", 1, ZSTD, 0, len(data), len(payload)) + payload
    with pytest.raises(DamagedChunk, match="does not hold"):
        decode(forged, digest)
    assert decode(bytes(blob), digest) == data


def test_a_killed_copys_lease_holds_nothing_back(tmp_path: Path) -> None:
    """kill -9 of a copy leaves its lease: on its own node the collector sees that its process is
    gone and clears it at once; a lease of another node's copy counts until it is LEASE_STALE_S old."""
    import json
    import socket

    store, _ = _store_with(tmp_path, 1)
    leases = store.root / collect.LEASES
    leases.mkdir(mode=0o700)
    began = time.time() - 60
    (leases / "here").write_text(
        json.dumps({"began": began, "host": socket.gethostname(), "pid": 2**22 + 1, "start": "123"})
    )
    (leases / "there").write_text(json.dumps({"began": began, "host": "node-b", "pid": 1, "start": "9"}))
    assert collect.fresh_since(store) == began - collect.CLOCK_MARGIN_S
    assert sorted(p.name for p in leases.iterdir()) == ["there"]
    old = time.time() - collect.LEASE_STALE_S - 1
    os.utime(leases / "there", (old, old))
    assert collect.fresh_since(store) is None and list(leases.iterdir()) == []

"""The chunks the hook records as it seals a generation (vault/seal.py), and the copier's use of them:
cut and hashed as the copier cuts and hashes, only the new ones read, a record that is not root's or
not of the manifest's files not used, and the hook never held long nor left half an index."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import msgspec
import pytest

from mom_checkpoint.image.criu_images import PAGE
from mom_checkpoint.image.hashing import ImageFile, open_files
from mom_checkpoint.image.manifest import GenerationInfo, KeptFile, Manifest
from mom_checkpoint.platform.errors import VerificationFailed
from mom_checkpoint.platform.safefs import UnsafePath
from mom_checkpoint.vault import chunking, seal
from mom_checkpoint.vault import index as vault_index
from mom_checkpoint.vault.chunked import cut, opened_generation
from mom_checkpoint.vault.store import Vault, sealed_chunks
from tests.criu_forge import PE_PRESENT, pagemap_image
from tests.helpers import digest_of
from tests.torque import manifest as make_manifest
from tests.unit.vault.test_vault import KEY

MIB = 1 << 20


def _generation(folder: Path, pages: bytes, number: int = 1) -> tuple[Manifest, list[str]]:
    """A generation as the hook leaves it before its manifest: a pages file of two runs of pages in
    windows of their own (after its pagemap), a small core image, and a kept file; and its manifest."""
    runs = [(0x400000, 3 * MIB // PAGE), (0x10000000, len(pages) // PAGE - 3 * MIB // PAGE)]
    pagemap = pagemap_image(1, [[(1, address), (2, count), (4, PE_PRESENT)] for address, count in runs])
    contents = {
        "image/pagemap-42.img": pagemap,
        "image/pages-1.img": pages,
        "image/core-42.img": b"core" * 700,
        "kept/held-0": b"script\n" * 40_000,
    }
    for rel, data in contents.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    name = f"{number:06d}-20261206T10000{number}Z"
    files = [
        ImageFile(rel, len(data), digest_of(data)) for rel, data in contents.items() if rel != "kept/held-0"
    ]
    held = contents["kept/held-0"]
    kept = [KeptFile("/home/alice/job.sh", "kept/held-0", "held", 0, len(held), digest_of(held))]
    record = msgspec.structs.replace(
        make_manifest("42.head", number, name, 4711, 1.0),
        files=files, kept=kept, total_bytes=sum(f.size for f in files),
        generation=GenerationInfo(number, name),
    )  # fmt: skip
    return record, [*(f.path for f in files), "kept/held-0"]


def _all_files(record: Manifest) -> list[ImageFile]:
    return record.every_file


def _chunks(index: vault_index.Index) -> list[tuple[str, list[tuple[bytes, int]]]]:
    return [(f.path, [(c.digest, c.size) for c in f.chunks]) for f in index.files]


def test_the_hook_cuts_and_hashes_a_generation_as_the_copier_does(tmp_path: Path) -> None:
    source = tmp_path / "generation"
    record, relpaths = _generation(source, os.urandom(5 * MIB))
    sealed = seal.chunk_index(source, relpaths)
    recorded = sealed.index
    assert sealed.digests == [f.digest for f in _all_files(record)]  # each file, from the same bytes
    with opened_generation(source, record) as (opened, files):
        hashed = cut(opened, files, {}, tick=lambda: None)
        taken = cut(opened, files, {}, tick=lambda: None, sealed=recorded)
    assert not hashed.sealed and taken.sealed
    assert _chunks(recorded) == _chunks(hashed.index)
    # the pages by their windows (3 MiB, then 2 MiB elsewhere), every other file in fixed pieces
    sizes = {f.path: [c.size for c in f.chunks] for f in recorded.files}
    assert sizes["image/pages-1.img"] == [MIB] * 5 and sizes["kept/held-0"] == chunking.fixed(280_000)
    assert taken.new.keys() == hashed.new.keys() and taken.pieces == hashed.pieces


def test_a_copy_with_the_hooks_chunks_reads_only_the_new_ones(tmp_path: Path) -> None:
    """The second generation's first window is new; the four after it are in the vault already.
    Bytes changed on the node after the seal, in a chunk the vault holds, are never read (the vault's
    copy is made of the chunks it had, and verifies); in the new chunk they are caught, and nothing
    is published."""
    vault = Vault(tmp_path / "vault")
    vault.root.mkdir(mode=0o700)
    pages = os.urandom(5 * MIB)
    first = tmp_path / "first"
    record, relpaths = _generation(first, pages, number=1)
    vault_index.write(first, seal.chunk_index(first, relpaths).index)
    with vault.lock(KEY) as beat:
        _, sent = vault.store(KEY, first, record, heartbeat=beat)
    assert sent.sealed and sent.new_chunks == sent.chunks == 5 + 3

    for where, offset in (("held", 4 * MIB), ("new", 0)):
        changed = os.urandom(MIB) + pages[MIB:]
        second = tmp_path / f"second-{where}"
        again, relpaths = _generation(second, changed, number=2 if where == "held" else 3)
        vault_index.write(second, seal.chunk_index(second, relpaths).index)
        with open(second / "image/pages-1.img", "r+b") as pages_file:  # changed after the seal
            pages_file.seek(offset)
            pages_file.write(b"\0" * PAGE)
        with vault.lock(KEY) as beat:
            if where == "new":
                with pytest.raises(VerificationFailed, match="changed while it was copied"):
                    vault.store(KEY, second, again, heartbeat=beat)
                continue
            stored, sent = vault.store(KEY, second, again, heartbeat=beat)
        assert sent.sealed and sent.new_chunks == 1 and sent.new_bytes == MIB
        vault.check_chunked(stored.path, again)  # every chunk read back: the file the manifest records
    assert [g.number for g in vault.generations(KEY.token)] == [1, 2]


def test_a_record_that_is_not_roots_or_not_of_the_manifests_files_is_not_used(tmp_path: Path) -> None:
    source = tmp_path / "generation"
    record, relpaths = _generation(source, os.urandom(5 * MIB))
    recorded = seal.chunk_index(source, relpaths).index
    vault_index.write(source, recorded)
    assert sealed_chunks(source) == recorded
    os.chown(source / vault_index.INDEX, 1001, 1001)  # not root's: not root's record
    assert sealed_chunks(source) is None
    os.unlink(source / vault_index.INDEX)
    (source / vault_index.INDEX).write_bytes(b"\x93garbled")
    os.chmod(source / vault_index.INDEX, 0o600)
    assert sealed_chunks(source) is None
    # of other files (one left out, another size): not used, and then each file is checked whole
    others = [
        vault_index.Index(recorded.format, recorded.files[1:]),
        vault_index.Index(recorded.format, [recorded.files[0], *recorded.files[2:], recorded.files[1]]),
    ]
    shorter = recorded.files[1]
    others.append(
        vault_index.Index(
            recorded.format,
            [
                recorded.files[0],
                vault_index.FileChunks(shorter.path, shorter.chunks[:-1]),
                *recorded.files[2:],
            ],
        )
    )
    with opened_generation(source, record) as (opened, files):
        for other in others:
            assert not seal.matches(other, files)
            assert not cut(opened, files, {}, tick=lambda: None, sealed=other).sealed
    forged = msgspec.structs.replace(
        record, files=[msgspec.structs.replace(f, digest=digest_of(b"other")) for f in record.files]
    )
    with opened_generation(source, forged) as (opened, files), pytest.raises(VerificationFailed):
        cut(opened, files, {}, tick=lambda: None, sealed=others[0])


def test_the_hook_waits_for_its_chunks_only_so_long_and_never_leaves_half_an_index(tmp_path: Path) -> None:
    source = tmp_path / "generation"
    record, relpaths = _generation(source, os.urandom(5 * MIB))
    files = _all_files(record)
    sealing = seal.Sealing(source, relpaths, max_bytes=None, deadline=None)
    assert sealing.record(source, files[1:], deadline=None) is not None  # not the manifest's files
    assert not (source / vault_index.INDEX).exists()
    assert sealing.record(tmp_path / "gone", files, deadline=None) is not None  # cannot be written
    assert sealing.record(source, files, deadline=None) is None
    assert _chunks(vault_index.read(source)) == _chunks(seal.chunk_index(source, relpaths).index)
    # a file the bound refuses: no index, said
    os.unlink(source / vault_index.INDEX)
    too_large = seal.Sealing(source, relpaths, max_bytes=MIB, deadline=None)
    assert "more than" in str(too_large.record(source, files, deadline=None))
    assert not (source / vault_index.INDEX).exists()
    # out of time: the hook goes on at once, and the thread stops within a chunk
    with open(source / "image/pages-1.img", "r+b") as big:
        big.truncate(4 << 30)  # 4 GiB, sparse: seconds to hash
    slow = seal.Sealing(source, relpaths, max_bytes=None, deadline=None)
    started = time.monotonic()
    assert "not all hashed" in str(slow.record(source, files, deadline=time.monotonic()))
    assert time.monotonic() - started < 0.5
    slow._thread.join(5)
    assert not slow._thread.is_alive() and not (source / vault_index.INDEX).exists()


def test_chunks_of_other_bytes_than_the_manifest_records_are_not_recorded(tmp_path: Path) -> None:
    """A checkpointer that rewrote bytes the hook had already hashed for the manifest (the follower's,
    during the dump): the seal hashes each whole file from the bytes it cut, finds it is not what
    the manifest records, and writes no index; the copy hashes the file whole and refuses it (with
    the index it would have published a copy that does not make the manifest's file)."""
    vault = Vault(tmp_path / "vault")
    vault.root.mkdir(mode=0o700)
    source = tmp_path / "generation"
    pages = os.urandom(5 * MIB)
    record, relpaths = _generation(source, pages)  # the manifest: the digest of ``pages``
    with open(source / "image/pages-1.img", "r+b") as rewritten:
        rewritten.write(b"\xaa" * PAGE)
    sealing = seal.Sealing(source, relpaths, max_bytes=None, deadline=None)
    problem = sealing.record(source, _all_files(record), deadline=None)
    assert problem == "image/pages-1.img is not what the manifest records (1 such file(s))"
    assert not (source / vault_index.INDEX).exists()
    with vault.lock(KEY) as beat, pytest.raises(VerificationFailed, match="checksum mismatch"):
        vault.store(KEY, source, record, heartbeat=beat)
    assert vault.generations(KEY.token) == []


def test_a_file_the_checkpointer_linked_from_elsewhere_refuses_the_image(tmp_path: Path) -> None:
    """Job-user mode: the user's checkpointer, holding the image folder's descriptor, hard-links a
    file of the user's own into the image (the kernel allows it for one's own files); through that
    other name the user could rewrite the generation after the dump. The hook's hashing and its
    seal refuse such an image."""
    base = tmp_path / "incoming"
    image = base / "image"
    image.mkdir(parents=True)
    base.chmod(0o700)
    os.chown(image, 1001, 1001)
    mine = tmp_path / "mine"
    mine.write_bytes(b"A" * 8192)
    os.chown(mine, 1001, 1001)
    tmp_path.chmod(0o755)  # (reached through a descriptor: the folders above are root's 0700)
    folder = os.open(image, os.O_RDONLY | os.O_DIRECTORY)
    theirs = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        pid = os.fork()
        if pid == 0:  # the user's checkpointer, through its descriptor
            status = 1
            try:
                os.setgroups([])
                os.setgid(1001)
                os.setuid(1001)
                os.link("mine", "pages-1.img", src_dir_fd=theirs, dst_dir_fd=folder)
                status = 0
            finally:
                os._exit(status)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.close(folder)
        os.close(theirs)
    assert (image / "pages-1.img").stat().st_nlink == 2
    with pytest.raises(UnsafePath, match="2 names"):
        open_files(base, ["image/pages-1.img"], single_link=True)
    with pytest.raises(UnsafePath, match="2 names"):
        seal.chunk_index(base, ["image/pages-1.img"])
    with open_files(base, ["image/pages-1.img"]) as taken:  # a restore's staging links: not refused
        assert len(taken.files) == 1


def test_a_job_of_many_threads_gets_its_chunks_recorded_under_a_small_descriptor_limit(
    tmp_path: Path,
) -> None:
    """A thousand-thread job has a thousand core images, and the seal opens them while the hook's
    hashing has them open too: the soft limit is raised towards the hard one for both."""
    relpaths = [f"image/core-{n}.img" for n in range(700)]
    (tmp_path / "image").mkdir()
    for rel in relpaths:
        (tmp_path / rel).write_bytes(rel.encode())
    files = [ImageFile(rel, len(rel), digest_of(rel.encode())) for rel in relpaths]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        sealing = seal.Sealing(tmp_path, relpaths, max_bytes=None, deadline=None)
        with open_files(tmp_path, relpaths, single_link=True) as hook:  # the hook's own, meanwhile
            digests = hook.digest()
        assert digests == files
        assert sealing.record(tmp_path, files, deadline=None) is None
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(vault_index.read(tmp_path).files) == 700


def test_a_file_cut_short_under_the_copier_is_refused_not_a_crash(tmp_path: Path) -> None:
    """The copier reads each piece with pread (a mapped file cut short would kill it with SIGBUS,
    and with it every other job's copy of the run): a piece past the file's new end refuses."""
    source = tmp_path / "generation"
    record, _ = _generation(source, os.urandom(5 * MIB))
    with opened_generation(source, record) as (opened, files):
        chunked = cut(opened, files, {}, tick=lambda: None)
        os.truncate(source / "image/pages-1.img", MIB)
        last = max(chunked.pieces.values(), key=lambda p: (p.file == 1, p.offset))
        with pytest.raises(VerificationFailed, match="ended before its recorded size"):
            opened.read(last)
        with pytest.raises(VerificationFailed, match="ended before its recorded size"):
            cut(opened, files, {}, tick=lambda: None)

"""hashing.digest_files: the same digests, order and refusals in the calling thread (small images) and on
threads with the write-back overlapped (large ones), and every file fsync'd when asked."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from mom_checkpoint.image import hashing
from mom_checkpoint.image.hashing import SizeChanged, digest_files
from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.errors import TimedOut
from tests.helpers import digest_of

SIZES = {
    "image/pages-1.img": 300_000,
    "image/core-1.img": 3_000,
    "image/empty.img": 0,
    "image/pages-2.img": 70_000,
}


@pytest.fixture(params=["calling thread", "threads"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "threads":
        monkeypatch.setattr(hashing, "THREADS_FROM_BYTES", 0)  # as if the image were large
    return str(request.param)


def image(tmp_path: Path) -> dict[str, bytes]:
    (tmp_path / "image").mkdir()
    contents = {}
    for rel, size in SIZES.items():
        data = os.urandom(size)
        (tmp_path / rel).write_bytes(data)
        contents[rel] = data
    return contents


@pytest.mark.parametrize("fsync", [False, True])
def test_digests_sizes_and_order_match_hashlib(tmp_path: Path, mode: str, fsync: bool) -> None:
    contents = image(tmp_path)
    rels = list(SIZES)
    files = digest_files(tmp_path, rels, fsync=fsync)
    assert [f.path for f in files] == rels
    for f in files:
        assert f.size == len(contents[f.path])
        assert f.digest == digest_of(contents[f.path])


def test_every_file_is_fsynced(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    image(tmp_path)
    synced: list[str] = []
    lock = threading.Lock()
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        with lock:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    digest_files(tmp_path, list(SIZES), fsync=True)
    assert sorted(synced) == sorted(str(tmp_path / rel) for rel in SIZES)
    synced.clear()
    digest_files(tmp_path, list(SIZES), fsync=False)
    assert synced == []


def test_progress_counts_every_byte(tmp_path: Path, mode: str) -> None:
    image(tmp_path)
    seen: list[int] = []
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            seen.append(n)

    digest_files(tmp_path, list(SIZES), progress=progress)
    assert sum(seen) == sum(SIZES.values())


@pytest.mark.parametrize("fsync", [False, True])
def test_a_fifo_or_a_symlink_is_refused_without_hanging(tmp_path: Path, mode: str, fsync: bool) -> None:
    image(tmp_path)
    threads = threading.active_count()
    os.mkfifo(tmp_path / "image" / "fifo.img")
    with pytest.raises(safefs.UnsafePath, match="not a regular file"):
        digest_files(tmp_path, [*SIZES, "image/fifo.img"], fsync=fsync)
    (tmp_path / "image" / "link.img").symlink_to(tmp_path / "image" / "pages-1.img")
    with pytest.raises(safefs.UnsafePath, match="symlink"):  # never the file behind the link
        digest_files(tmp_path, [*SIZES, "image/link.img"], fsync=fsync)
    assert threading.active_count() == threads, "a hashing or fsync thread outlived the call"


def test_a_missing_file_fails_the_call(tmp_path: Path, mode: str) -> None:
    image(tmp_path)
    with pytest.raises(FileNotFoundError):
        digest_files(tmp_path, [*SIZES, "image/gone.img"], fsync=True)


def test_a_folder_swapped_for_a_symlink_is_refused_not_followed(tmp_path: Path, mode: str) -> None:
    """The user owns the image folder (job-user mode): a folder listed a moment ago is now a link to
    /etc. Root refuses instead of hashing /etc/shadow into the manifest."""
    image(tmp_path)
    (tmp_path / "image" / "sub").symlink_to("/etc")
    with pytest.raises(safefs.UnsafePath, match="symlink"):
        digest_files(tmp_path, [*SIZES, "image/sub/shadow"])


def test_sizes_bounds_and_deadline(tmp_path: Path, mode: str) -> None:
    image(tmp_path)
    rels = list(SIZES)
    wrong = [*SIZES.values()]
    wrong[1] += 1
    with pytest.raises(SizeChanged, match=r"image/core-1\.img has 3000 bytes, 3001 expected"):
        digest_files(tmp_path, rels, sizes=wrong)
    with pytest.raises(safefs.TooLarge, match="more than the 1000"):
        digest_files(tmp_path, rels, max_bytes=1000)
    with pytest.raises(TimedOut):
        digest_files(tmp_path, rels, deadline=0.0)
    assert len(digest_files(tmp_path, rels, sizes=list(SIZES.values()), max_bytes=10**6)) == 4


def test_a_file_growing_meanwhile_is_read_only_as_far_as_its_size(tmp_path: Path, mode: str) -> None:
    """An 8 GiB sparse file planted after the size check costs nothing: reading stops at the size
    fstat gave when the file was opened."""
    contents = image(tmp_path)
    real_open = safefs.open_regular

    def open_then_grow(path: object, **kw: object) -> tuple[int, os.stat_result]:
        fd, st = real_open(path, **kw)  # type: ignore[arg-type]
        if str(path).endswith("pages-2.img"):
            os.truncate(tmp_path / "image" / "pages-2.img", 8 << 30)
        return fd, st

    import unittest.mock

    with unittest.mock.patch.object(safefs, "open_regular", open_then_grow):
        files = digest_files(tmp_path, list(SIZES))
    grown = next(f for f in files if f.path == "image/pages-2.img")
    assert (grown.size, grown.digest) == (70_000, digest_of(contents["image/pages-2.img"]))


def test_each_file_is_hashed_with_the_algorithm_it_was_recorded_with(tmp_path: Path, mode: str) -> None:
    """A manifest may mix algorithms (an older generation's sha256, new BLAKE3): each is checked with
    its own, and the digest says which."""
    contents = image(tmp_path)
    rels = list(SIZES)
    algorithms = ["sha256" if i % 2 else "blake3" for i in range(len(rels))]
    files = digest_files(tmp_path, rels, algorithms=algorithms)
    assert [f.digest for f in files] == [
        digest_of(contents[r], a) for r, a in zip(rels, algorithms, strict=True)
    ]
    assert files[1].digest.startswith("sha256:") and files[0].digest.startswith("blake3:")


def test_each_hashed_window_is_written_back_behind_the_hashing(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fsync, each 8 MiB the hashing has read is handed to the disk at once (sync_file_range), in
    order and without gaps, so the write-back trails the hashing; the fsync after it still runs."""
    (tmp_path / "image").mkdir()
    data = os.urandom(20 << 20)
    (tmp_path / "image" / "pages-1.img").write_bytes(data)
    (tmp_path / "image" / "core-1.img").write_bytes(data[:3000])
    ranges: list[tuple[str, int, int]] = []
    lock = threading.Lock()
    real = hashing.write_back_starter()
    assert real is not None, "this Linux libc has sync_file_range"

    def recording(fd: int, offset: int, length: int) -> None:
        with lock:
            ranges.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(hashing, "write_back_starter", lambda: recording)
    rels = ["image/pages-1.img", "image/core-1.img"]
    files = digest_files(tmp_path, rels, fsync=True)
    assert [f.digest for f in files] == [digest_of(data), digest_of(data[:3000])]
    window = hashing.WRITE_BEHIND_WINDOW
    assert ranges == [("pages-1.img", i * window, window) for i in range((20 << 20) // window)]
    ranges.clear()
    digest_files(tmp_path, rels, fsync=False)  # verification: nothing is written
    assert ranges == []

"""hashing.Follower: the files a checkpointer appends to are hashed while it writes them, and digest_files
takes over from where the follower got only where that is still the same file; whatever the folder's
owner swaps in, the follower never follows a link, hangs on a FIFO, reads past its bound or fails the
call, and the digest recorded is always that of every byte of the file."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mom_checkpoint.commands.checkpoint.meanwhile import WhileItRuns
from mom_checkpoint.image import hashing
from mom_checkpoint.image.hashing import Follower, Partial, digest_files
from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.environment import Runner
from tests.helpers import digest_of

PAGES = re.compile(r"pages-\d+\.img")
MIB = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    (tmp_path / "image").mkdir()
    return tmp_path / "image"


@pytest.fixture
def follow(tmp_path: Path) -> Iterator[Callable[..., Follower]]:
    started: list[Follower] = []

    def start(max_bytes: int | None = None, deadline: float | None = None) -> Follower:
        follower = Follower(tmp_path, "image", PAGES, max_bytes=max_bytes, deadline=deadline)
        follower.start()
        started.append(follower)
        return follower

    yield start
    for follower in started:
        follower.stop(timeout_s=10)


def until(condition: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        time.sleep(0.005)


def listings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the follower's listings of its folder, each counted once it has looked at every name
    (a name it opened blocking would keep the count where it is)."""
    done: list[int] = []
    real_list = Follower._list

    def counting(self: Follower, folder_fd: int, device: int) -> None:
        real_list(self, folder_fd, device)
        done.append(len(done) + 1)

    monkeypatch.setattr(Follower, "_list", counting)
    return done


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as out:
        out.write(data)


def followed_to_its_end(follow: Callable[..., Follower], image: Path, size: int) -> Follower:
    """A follower that has read the whole of image/pages-1.img (``size`` random bytes) and goes on."""
    follower = follow()
    append(image / "pages-1.img", os.urandom(size))
    until(lambda: follower.hashed == size, "the file is read")
    return follower


class NoRecord:
    """An incoming folder for _WhileItRuns that records no checkpointer."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record_checkpointer(self, pid: int) -> None:
        pass


def while_it_runs(base: Path, **follow: Any) -> WhileItRuns:
    incoming: Any = NoRecord(base)
    return WhileItRuns(incoming, lambda: "4.1.1", appended=PAGES, **follow)


def test_a_file_is_hashed_as_it_grows_and_only_its_tail_is_read_after(
    tmp_path: Path, image: Path, follow: Callable[..., Follower], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(12 * MIB + 12345)
    follower = follow()
    append(image / "pages-1.img", data[: 4 * MIB])
    until(lambda: follower.hashed == 4 * MIB, "the follower has read what was written so far")
    append(image / "pages-1.img", data[4 * MIB : 9 * MIB])
    until(lambda: follower.hashed == 9 * MIB, "the follower has caught up again")
    append(image / "pages-1.img", data[9 * MIB :])  # maybe read before the stop, maybe after
    partials = follower.stop(timeout_s=10)

    [partial] = partials.values()
    assert partial.rel == "image/pages-1.img"
    assert 9 * MIB <= partial.offset <= len(data)
    assert (partial.device, partial.inode) == (
        os.stat(image / "pages-1.img").st_dev,
        os.stat(image / "pages-1.img").st_ino,
    )
    reads: list[int] = []
    real_preadv = os.preadv

    def recording(fd: int, buffers: list[memoryview], offset: int) -> int:
        reads.append(offset)
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", recording)
    [whole] = digest_files(tmp_path, ["image/pages-1.img"], resume=partials)
    assert whole.size == len(data)
    assert whole.digest == digest_of(data)
    assert all(offset >= partial.offset for offset in reads), "bytes already hashed were read again"


def test_a_second_file_and_a_name_not_followed(
    tmp_path: Path, image: Path, follow: Callable[..., Follower]
) -> None:
    follower = follow()
    one, two, core = os.urandom(MIB), os.urandom(2 * MIB), os.urandom(3000)
    append(image / "pages-1.img", one)
    append(image / "core-1.img", core)
    until(lambda: follower.hashed == MIB, "the first pages file is read")
    append(image / "pages-2.img", two)
    until(lambda: follower.hashed == 3 * MIB, "the second pages file is read too")
    partials = follower.stop(timeout_s=10)
    assert sorted(partials) == ["image/pages-1.img", "image/pages-2.img"]  # core-1.img: not its name
    rels = ["image/core-1.img", "image/pages-1.img", "image/pages-2.img"]
    files = digest_files(tmp_path, rels, resume=partials)
    assert [f.digest for f in files] == [digest_of(core), digest_of(one), digest_of(two)]


def test_a_file_swapped_for_another_is_hashed_from_its_start(
    tmp_path: Path, image: Path, follow: Callable[..., Follower]
) -> None:
    partials = followed_to_its_end(follow, image, 2 * MIB).stop(timeout_s=10)
    assert partials["image/pages-1.img"].offset == 2 * MIB
    other = os.urandom(3 * MIB)  # another inode by the same name, longer than what was hashed
    (tmp_path / "other").write_bytes(other)
    os.rename(tmp_path / "other", image / "pages-1.img")
    [whole] = digest_files(tmp_path, ["image/pages-1.img"], resume=partials)
    assert whole.digest == digest_of(other)


def test_a_file_cut_short_while_followed_is_hashed_from_its_start(
    tmp_path: Path, image: Path, follow: Callable[..., Follower]
) -> None:
    follower = followed_to_its_end(follow, image, 2 * MIB)
    data = os.urandom(MIB)
    with open(image / "pages-1.img", "r+b") as out:  # the same inode, not only appended to
        out.truncate(0)
        out.write(data)
    until(lambda: follower.error is not None, "the follower sees the file shrink")
    assert isinstance(follower.error, hashing.SizeChanged)
    assert follower.stop(timeout_s=10) == {}  # nothing of a failed following is taken over
    [whole] = digest_files(tmp_path, ["image/pages-1.img"], resume={})
    assert whole.digest == digest_of(data)


def test_a_partial_is_taken_over_only_for_the_same_algorithm_and_no_longer_than_the_file(
    tmp_path: Path, image: Path
) -> None:
    data = os.urandom(MIB)
    (image / "pages-1.img").write_bytes(data)
    st = os.stat(image / "pages-1.img")
    wrong = hashing.hasher("blake3")
    wrong.update(b"not the file's bytes")
    rel = "image/pages-1.img"
    for partial in (
        Partial(rel, st.st_dev, st.st_ino, 20, wrong, "sha256"),  # another algorithm
        Partial(rel, st.st_dev, st.st_ino, MIB + 1, wrong, "blake3"),  # beyond the file's end
        Partial(rel, st.st_dev, st.st_ino + 1, 20, wrong, "blake3"),  # another inode
    ):
        [whole] = digest_files(tmp_path, [rel], resume={rel: partial})
        assert whole.digest == digest_of(data), partial
    taken = Partial(rel, st.st_dev, st.st_ino, 20, wrong, "blake3")  # proves a match is taken over
    [whole] = digest_files(tmp_path, [rel], resume={rel: taken})
    assert whole.digest != digest_of(data)


def test_links_fifos_and_folders_by_that_name_are_never_followed_nor_hang_it(
    tmp_path: Path, image: Path, follow: Callable[..., Follower], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(MIB))
    (image / "pages-1.img").symlink_to(secret)
    os.mkfifo(image / "pages-2.img")  # no writer: opening it for reading would block
    (image / "pages-3.img").mkdir()
    os.link(secret, image / "pages-4.img")  # a hard link (CRIU's files have one link): not followed
    (image / "pages-5.img").write_bytes(os.urandom(MIB))  # the one file that is followed
    os.link(image / "pages-5.img", tmp_path / "elsewhere")  # ... until it gets a second link
    listed = listings(monkeypatch)
    follower = follow()
    until(lambda: len(listed) >= 2, "the follower has looked at every name, and again")  # no FIFO hangs it
    partials = follower.stop(timeout_s=10)
    assert not follower.still_running, "the follower hangs"
    assert follower.error is None
    assert partials == {}
    assert follower.hashed == 0
    with pytest.raises(safefs.UnsafePath):  # and the hashing after the dump refuses the image
        digest_files(tmp_path, ["image/pages-1.img"], resume=partials)


def test_a_file_mounted_over_a_name_is_not_followed(
    tmp_path: Path, image: Path, follow: Callable[..., Follower], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another file system under a pages file's name (a user's FUSE mount, say, whose reads may never
    return) is left to the hashing after the dump."""
    other = Path("/dev/shm") / f"mom-checkpoint-test-{os.getpid()}"
    other.write_bytes(os.urandom(MIB))
    (image / "pages-1.img").touch()
    subprocess.run(["mount", "--bind", str(other), str(image / "pages-1.img")], check=True)
    try:
        assert os.stat(image / "pages-1.img").st_dev != os.stat(image).st_dev
        listed = listings(monkeypatch)
        follower = follow()
        until(lambda: len(listed) >= 2, "the follower has looked at the name, and again")
        assert follower.stop(timeout_s=10) == {}
        assert follower.hashed == 0 and follower.error is None
        with pytest.raises(safefs.UnsafePath, match="another file system"):  # nor hashed after the dump
            digest_files(tmp_path, ["image/pages-1.img"], resume={})
    finally:
        subprocess.run(["umount", str(image / "pages-1.img")], check=True)
        other.unlink()


def test_an_image_folder_mounted_over_is_not_followed(tmp_path: Path, image: Path) -> None:
    (image / "pages-1.img").write_bytes(os.urandom(MIB))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(image)], check=True)
    try:
        (image / "pages-1.img").write_bytes(os.urandom(MIB))  # on the mount
        follower = Follower(tmp_path, "image", PAGES, max_bytes=None, deadline=None)
        follower.start()
        assert follower.stop(timeout_s=10) == {}
        assert isinstance(follower.error, safefs.UnsafePath) and follower.hashed == 0
        with pytest.raises(safefs.UnsafePath, match="another file system"):
            digest_files(tmp_path, ["image/pages-1.img"])
    finally:
        subprocess.run(["umount", str(image)], check=True)


def test_each_inode_is_followed_once_and_only_so_many_files(
    image: Path, follow: Callable[..., Follower], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashing, "FOLLOW_MAX_FILES", 3)
    for i in range(1, 6):
        (image / f"pages-{i}.img").write_bytes(os.urandom(MIB))
    listed = listings(monkeypatch)
    follower = follow()
    until(lambda: follower.hashed == 3 * MIB, "three files are read")
    seen = len(listed)
    # listed twice more since: the files of the listing after the read are hashed as far as they go
    until(lambda: len(listed) >= seen + 2, "the follower has listed the folder again")
    partials = follower.stop(timeout_s=10)
    assert follower.hashed == 3 * MIB and len(partials) == 3  # the other two: hashed after the dump


def test_a_folder_of_too_many_entries_ends_the_following(
    image: Path, follow: Callable[..., Follower], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashing, "FOLLOW_MAX_ENTRIES", 50)
    (image / "pages-1.img").write_bytes(os.urandom(MIB))
    for i in range(60):
        (image / f"junk-{i}").touch()
    follower = follow()
    until(lambda: follower.error is not None, "the follower gives up")
    assert isinstance(follower.error, safefs.TooLarge)
    assert follower.stop(timeout_s=10) == {}


def test_a_follower_that_does_not_stop_in_time_hands_nothing_over(
    tmp_path: Path, image: Path, follow: Callable[..., Follower], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that never returns (a hung file system): stop() gives up after its time, nothing of the
    follower's is used, and the file is hashed from its first byte."""
    data = os.urandom(2 * MIB)
    (image / "pages-1.img").write_bytes(data)
    release = threading.Event()
    blocked = threading.Event()
    real_preadv = os.preadv

    def hanging(fd: int, buffers: list[memoryview], offset: int) -> int:
        if threading.current_thread().name == "image-follower" and offset >= MIB:
            blocked.set()
            release.wait(30)
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", hanging)
    follower = follow()
    until(blocked.is_set, "the follower's second read hangs")
    thread = follower._thread
    assert thread is not None
    joined: list[float | None] = []
    real_join = thread.join

    def join(timeout: float | None = None) -> None:
        joined.append(timeout)
        real_join(timeout)

    monkeypatch.setattr(thread, "join", join)
    assert follower.stop(timeout_s=0.3) == {}
    assert joined == [0.3], "stop() did not wait for the follower for its time, and only that"
    assert follower.still_running and not release.is_set()  # it returned while the read still hangs
    [whole] = digest_files(tmp_path, ["image/pages-1.img"], resume={})
    assert whole.digest == digest_of(data)
    release.set()


def test_the_image_folder_swapped_for_a_link_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pages-1.img").write_bytes(os.urandom(MIB))
    (tmp_path / "image").symlink_to(elsewhere)
    follower = Follower(tmp_path, "image", PAGES, max_bytes=None, deadline=None)
    follower.start()
    assert follower.stop(timeout_s=10) == {}
    assert isinstance(follower.error, safefs.UnsafePath)
    assert follower.hashed == 0


def test_it_reads_no_more_than_the_bound_and_nothing_past_the_deadline(
    image: Path, follow: Callable[..., Follower]
) -> None:
    (image / "pages-1.img").write_bytes(os.urandom(3 * MIB))
    bounded = follow(max_bytes=MIB + 10)
    until(lambda: bounded.hashed == MIB, "the follower reads up to its bound")
    thread = bounded._thread
    assert thread is not None
    until(lambda: not thread.is_alive(), "the follower ends at its bound")  # and so reads no more
    assert bounded.hashed == MIB  # whole chunks only, never past the bound
    assert bounded.stop(timeout_s=10)["image/pages-1.img"].offset == MIB
    late = follow(deadline=time.monotonic() - 1)
    assert late.stop(timeout_s=10) == {}
    assert late.hashed == 0


def test_while_the_checkpointer_runs_its_pages_are_hashed_and_taken_over_after(tmp_path: Path) -> None:
    """_WhileItRuns starts the follower when the checkpointer starts (here a shell appending 1 MiB five
    times), and stop_following() stops it and hands over what it hashed."""
    image = tmp_path / "image"
    image.mkdir()
    source = tmp_path / "source"
    source.write_bytes(os.urandom(5 * MIB))

    meanwhile = while_it_runs(tmp_path, max_bytes=64 * MIB, deadline=time.monotonic() + 60)
    script = (
        f"for i in 0 1 2 3 4; do dd if={source} of={image}/pages-1.img bs=1M skip=$i seek=$i count=1 "
        "conv=notrunc status=none; sleep 0.2; done; sleep 1"
    )
    completed = Runner().run(["/bin/sh", "-c", script], timeout_s=60, on_start=meanwhile)
    assert completed.returncode == 0, completed.stderr
    partials = meanwhile.stop_following(timeout_s=10)
    assert meanwhile.follow_problem() == {}
    assert partials["image/pages-1.img"].offset == 5 * MIB  # it kept up: all of it while it was written
    [whole] = digest_files(tmp_path, ["image/pages-1.img"], resume=partials, fsync=True)
    assert whole.digest == digest_of(source.read_bytes())


def test_a_follower_that_failed_says_why_and_hands_nothing_over(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "image").symlink_to(elsewhere)  # the user's image folder swapped for a link
    meanwhile = while_it_runs(tmp_path)
    script = f"head -c 1048576 /dev/zero > {elsewhere}/pages-1.img; sleep 0.3"
    assert Runner().run(["/bin/sh", "-c", script], timeout_s=60, on_start=meanwhile).returncode == 0
    assert meanwhile.stop_following(timeout_s=10) == {}
    assert meanwhile.follow_problem()["follow_error"].startswith("UnsafePath: ")


def test_without_appended_files_nothing_is_followed() -> None:
    meanwhile = WhileItRuns(None, lambda: "1")  # type: ignore[arg-type]
    assert meanwhile.stop_following(timeout_s=1) == {}
    assert meanwhile.follow_problem() == {}


def test_a_follower_that_cannot_start_never_ends_the_checkpointer(
    tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Follower) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(Follower, "start", refuse)
    meanwhile = while_it_runs(tmp_path)
    completed = Runner().run(["/bin/sh", "-c", "sleep 0.3; echo done"], timeout_s=60, on_start=meanwhile)
    assert completed.returncode == 0 and completed.stdout.strip() == "done"
    assert meanwhile.stop_following(timeout_s=1) == {}
    assert meanwhile.version(timeout_s=10) == "4.1.1"  # the rest of what runs meanwhile still ran


def test_on_a_single_core_nothing_is_followed(
    tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    (image / "pages-1.img").write_bytes(os.urandom(MIB))
    meanwhile = while_it_runs(tmp_path)
    Runner().run(["/bin/sleep", "0.3"], timeout_s=60, on_start=meanwhile)
    assert meanwhile.stop_following(timeout_s=1) == {}


def test_a_partial_can_be_taken_over_twice_and_by_the_threads_of_a_large_image(
    tmp_path: Path, image: Path, follow: Callable[..., Follower], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashing, "THREADS_FROM_BYTES", 0)  # hashed on threads, as a large image
    one, two = os.urandom(3 * MIB), os.urandom(2 * MIB + 7)
    (image / "pages-1.img").write_bytes(one)
    (image / "pages-2.img").write_bytes(two)
    (image / "core-1.img").write_bytes(one[:100])
    follower = follow()
    until(lambda: follower.hashed == len(one) + len(two), "both files are read")
    partials = follower.stop(timeout_s=10)
    rels = ["image/core-1.img", "image/pages-1.img", "image/pages-2.img"]
    expected = [digest_of(one[:100]), digest_of(one), digest_of(two)]
    for _ in range(2):  # the take-over copies the state: the same Partial gives the same digest again
        with hashing.open_files(tmp_path, rels, resume=partials) as files:
            assert files.taken_over == len(one) + len(two)
            assert [f.digest for f in files.digest(fsync=True)] == expected


def test_the_followed_part_is_written_back_at_once_and_the_rest_behind_the_hashing(
    tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(20 * MIB)
    (image / "pages-1.img").write_bytes(data)
    st = os.stat(image / "pages-1.img")
    state = hashing.hasher("blake3")
    state.update(data[: 12 * MIB])
    ranges: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def recording(fd: int, offset: int, length: int) -> None:
        with lock:
            ranges.append((offset, length, threading.current_thread().name))

    monkeypatch.setattr(hashing, "write_back_starter", lambda: recording)
    resume = {
        "image/pages-1.img": Partial("image/pages-1.img", st.st_dev, st.st_ino, 12 * MIB, state, "blake3")
    }
    [whole] = digest_files(tmp_path, ["image/pages-1.img"], fsync=True, resume=resume)
    assert whole.digest == digest_of(data)
    window = hashing.WRITE_BEHIND_WINDOW
    assert sorted(ranges) == [(0, 12 * MIB, "write-back"), (12 * MIB, window, "MainThread")]

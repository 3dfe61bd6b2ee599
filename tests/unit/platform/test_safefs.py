"""safefs: what root does below folders a user can write (symlinks, FIFOs, deep trees, huge files)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.errors import TimedOut


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Not pytest's own: its clean-up of old runs recurses and cannot remove the deep trees made here."""
    path = Path(tempfile.mkdtemp(prefix="mom-checkpoint-safefs-"))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def deep_tree(top: Path, levels: int) -> Path:
    """A chain of ``levels`` folders below ``top`` (built through descriptors: no path gets long)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            file_fd = os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=child)
            os.write(file_fd, b"x")
            os.close(file_fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return top


def test_remove_tree_removes_a_tree_deeper_than_any_recursion_limit(tmp_path: Path) -> None:
    top = tmp_path / "doomed"
    top.mkdir()
    deep_tree(top, 3000)
    assert safefs.remove_tree(top)
    assert not top.exists()


def test_remove_tree_never_follows_a_symlink(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("mine")
    doomed = tmp_path / "doomed"
    (doomed / "sub").mkdir(parents=True)
    (doomed / "sub" / "link").symlink_to(precious)
    (doomed / "file-link").symlink_to(precious / "keep")
    assert safefs.remove_tree(doomed)
    assert (precious / "keep").read_text() == "mine"
    # the path itself a symlink: only the link goes
    link = tmp_path / "link"
    link.symlink_to(precious)
    assert safefs.remove_tree(link)
    assert not link.exists() and (precious / "keep").exists()


def test_remove_tree_with_a_deadline_leaves_the_rest_for_later(tmp_path: Path) -> None:
    top = tmp_path / "doomed"
    top.mkdir()
    deep_tree(top, 200)
    assert not safefs.remove_tree(top, deadline=time.monotonic() - 1)
    assert top.exists()
    assert safefs.remove_tree(top)
    assert not top.exists()


def test_walk_refuses_a_tree_beyond_its_depth_and_entry_limits(tmp_path: Path) -> None:
    top = tmp_path / "image"
    top.mkdir()
    deep_tree(top, 40)
    fd = safefs.open_dir(top)
    try:
        with pytest.raises(safefs.UnsafePath, match="folders deep"):
            safefs.walk(fd, max_depth=32)
        entries = safefs.walk(fd, max_depth=64)
        assert len(entries) == 80 and entries[0].path == "d" and entries[-1].kind == "file"
        with pytest.raises(safefs.UnsafePath, match="more than 10 entries"):
            safefs.walk(fd, max_depth=64, max_entries=10)
        with pytest.raises(TimedOut):
            safefs.walk(fd, max_depth=64, deadline=time.monotonic() - 1)
    finally:
        os.close(fd)


def test_walk_reports_symlinks_and_special_files_without_following_them(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "l").symlink_to("/etc")
    os.mkfifo(tmp_path / "p")
    fd = safefs.open_dir(tmp_path)
    try:
        kinds = {e.path: e.kind for e in safefs.walk(fd)}
    finally:
        os.close(fd)
    assert kinds == {"d": "dir", "d/f": "file", "l": "symlink", "p": "other"}


def test_open_regular_refuses_a_symlink_at_any_component(tmp_path: Path) -> None:
    """A folder swapped for a symlink after it was listed: the path is resolved again, component by
    component, and the link is refused instead of followed to /etc."""
    (tmp_path / "image" / "sub").mkdir(parents=True)
    (tmp_path / "image" / "sub" / "passwd").write_text("mine")
    fd = safefs.open_dir(tmp_path / "image")
    try:
        listed = [e.path for e in safefs.walk(fd) if e.kind == "file"]
        assert listed == ["sub/passwd"]
        (tmp_path / "image" / "sub" / "passwd").unlink()
        (tmp_path / "image" / "sub").rmdir()
        (tmp_path / "image" / "sub").symlink_to("/etc")
        with pytest.raises(safefs.UnsafePath, match="symlink"):
            safefs.open_regular(listed[0], dir_fd=fd)
        (tmp_path / "image" / "top").symlink_to("/etc/passwd")
        with pytest.raises(safefs.UnsafePath, match="symlink"):
            safefs.open_regular("top", dir_fd=fd)
        for bad in ("../x", "/etc/passwd", "a//b", "./x"):
            with pytest.raises(safefs.UnsafePath, match="plain relative path"):
                safefs.open_regular(bad, dir_fd=fd)
    finally:
        os.close(fd)


def test_a_fifo_is_refused_at_once_never_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "dump.log")
    done = threading.Event()

    def read() -> None:
        assert safefs.read_text("dump.log", dir_fd=dir_fd) == ""
        done.set()

    dir_fd = safefs.open_dir(tmp_path)
    try:
        worker = threading.Thread(target=read, daemon=True)
        worker.start()
        worker.join(5)
        assert done.is_set(), "reading a FIFO blocked"
        with pytest.raises(safefs.UnsafePath, match="not a regular file"):
            safefs.open_regular("dump.log", dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def test_read_text_is_bounded_and_a_sparse_giant_is_refused_by_size(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("a" * 100_000 + "\nError: the last line\n")
    assert safefs.read_text(log, limit=30, tail=True).endswith("Error: the last line\n")
    assert len(safefs.read_text(log, limit=1000)) == 1000
    giant = tmp_path / "pages-9.img"
    with open(giant, "wb") as fh:
        fh.truncate(8 << 30)  # 8 GiB, sparse: costs nothing to plant
    with pytest.raises(safefs.TooLarge, match="more than the"):
        safefs.open_regular(giant, max_bytes=1 << 30)


def test_tree_bytes_counts_regular_files_only_and_survives_deep_trees(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "l").symlink_to("/etc/passwd")
    deep_tree(tmp_path, 2000)
    total = safefs.tree_bytes(tmp_path)
    assert 10 <= total <= 10 + 2000


ALICE, BOB = 54321, 54322  # uids of no account: only ownership matters here


def _owned(path: Path, uid: int, mode: int = 0o700) -> Path:
    path.mkdir(mode=mode)
    os.chown(path, uid, uid)
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the folders belong to other uids")
def test_root_never_empties_another_users_folder_brought_into_an_image(tmp_path: Path) -> None:
    """Alice moves a folder of hers into her image; in it is Bob's private folder (she may move her own
    folder, and it takes Bob's along). Pruning her generation must not delete Bob's files, which she
    could never delete herself: below her folders root enters only hers, and leaves Bob's as it is."""
    generation = tmp_path / ".pruning-000001-20261130T000000Z"  # root's, as a generation folder is
    generation.mkdir(mode=0o700)
    image = _owned(generation / "image", ALICE)
    (image / "pages-1.img").write_bytes(b"alice's memory")
    hers = _owned(image / "mine", ALICE)
    (hers / "notes").write_text("hers")
    bobs = _owned(hers / "bob-private", BOB)
    (bobs / "thesis.tex").write_text("bob's")
    deep = deep_tree(hers, safefs.MAX_OPEN + 5)  # and one deeper than the removal keeps open
    bobs_deep = _owned(deep / "bob-deep", BOB)
    (bobs_deep / "data").write_text("bob's too")
    for path in [deep, *deep.parents]:
        if path == hers:
            break
        os.chown(path, ALICE, ALICE)
    _owned(image / "empty-of-bob", BOB)  # an empty folder of his: removed (she could rmdir it)

    assert not safefs.remove_tree(generation)  # what is Bob's is left, and said

    assert (bobs / "thesis.tex").read_text() == "bob's"
    assert [p.read_text() for p in tmp_path.rglob("data")] == ["bob's too"]
    assert not (image / "pages-1.img").exists() and not (hers / "notes").exists()
    assert not (image / "empty-of-bob").exists()
    # the same below a folder of Alice's itself (a removal that starts at a user's folder)
    top = _owned(tmp_path / "alice-top", ALICE)
    inner = _owned(top / "bob-inner", BOB)
    (inner / "x").write_text("bob's")
    assert not safefs.remove_tree(top)
    assert (inner / "x").read_text() == "bob's"

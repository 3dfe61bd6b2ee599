"""staging: root's copy of an image for one restore (small files copied and held, page files linked)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mom_checkpoint.image import staging
from mom_checkpoint.image.hashing import ImageFile
from tests.helpers import digest_of

PAGES = re.compile(r"pages-\d+\.img")


def _generation(tmp_path: Path) -> tuple[Path, list[ImageFile], dict[str, bytes]]:
    generation = tmp_path / "000001-20261130T000000Z"
    (generation / "image").mkdir(parents=True)
    data = {"core-4711.img": os.urandom(3000), "pages-1.img": os.urandom(3 << 20)}
    for name, content in data.items():
        (generation / "image" / name).write_bytes(content)
    files = [ImageFile(f"image/{n}", len(c), digest_of(c)) for n, c in data.items()]
    return generation, files, data


@pytest.mark.parametrize("can_link", [True, False])
def test_page_files_are_linked_or_streamed_never_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, can_link: bool
) -> None:
    """A page file is the job's memory: linked, or where it cannot be (another file system, the link
    limit a user can reach by linking their own file 65,000 times) copied a chunk at a time. Only the
    small files the restorer decides from are held in memory, for the backend to read."""
    generation, files, data = _generation(tmp_path)
    (tmp_path / "work").mkdir()
    if not can_link:
        monkeypatch.setattr(staging, "_link", lambda fd, name, target: False)
    staged = staging.stage(generation, files, tmp_path / "work", PAGES)
    try:
        assert set(staged.contents) == {"core-4711.img"}
        assert staged.contents["core-4711.img"] == data["core-4711.img"]
        copy = staged.image_dir / "pages-1.img"
        assert copy.read_bytes() == data["pages-1.img"]
        linked = os.stat(copy).st_ino == os.stat(generation / "image" / "pages-1.img").st_ino
        assert linked == can_link
        if not can_link:
            assert (os.stat(copy).st_uid, os.stat(copy).st_mode & 0o777) == (os.geteuid(), 0o644)
    finally:
        staged.close()


@pytest.mark.parametrize(
    ("owner", "mode", "linked"),
    [
        (0, 0o600, False),  # root mode's page file, restored as the job's user: a copy they can read
        (0, 0o644, True),  # a vault copy for a job-user restore: root's, readable
        (2001, 0o600, True),  # the job user's own (job-user mode)
    ],
)
def test_a_page_file_the_restorer_cannot_read_is_copied(
    tmp_path: Path, owner: int, mode: int, linked: bool
) -> None:
    """run_as = "auto" restores a generation made in root mode (root's 0600 pages) with the job user's
    CRIU: a link to a file it cannot read would fail the restore, so that one is streamed into root's
    0644 copy, never made readable in the generation itself."""
    generation, files, data = _generation(tmp_path)
    pages = generation / "image" / "pages-1.img"
    os.chown(pages, owner, owner)
    pages.chmod(mode)
    (tmp_path / "work").mkdir()
    staged = staging.stage(generation, files, tmp_path / "work", PAGES, reader=2001)
    try:
        copy = staged.image_dir / "pages-1.img"
        assert copy.read_bytes() == data["pages-1.img"]
        assert (os.stat(copy).st_ino == os.stat(pages).st_ino) == linked
        assert os.stat(pages).st_mode & 0o777 == mode  # the generation's file is left as it was
        if not linked:
            assert (os.stat(copy).st_uid, os.stat(copy).st_mode & 0o777) == (0, 0o644)
    finally:
        staged.close()


def test_a_copy_for_the_restore_stops_at_its_deadline(tmp_path: Path) -> None:
    """Review of issue 25 #3: a page file streamed into the staging (a root-mode generation for a
    job-user restore, or a psnc/blcr image) was copied with no bound in time."""
    from mom_checkpoint.platform.errors import TimedOut

    generation, files, _data = _generation(tmp_path)
    (generation / "image" / "pages-1.img").chmod(0o600)  # root's: the restorer (2001) cannot read it
    (tmp_path / "work").mkdir()
    with pytest.raises(TimedOut):
        staging.stage(generation, files, tmp_path / "work", PAGES, reader=2001, deadline=0.0)

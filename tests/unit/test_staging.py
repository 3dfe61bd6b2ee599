"""staging: root's copy of an image for one restore (small files copied and held, page files linked)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mom_checkpoint import staging
from mom_checkpoint.hashing import ImageFile
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

"""CHECKPOINT_DIR and %path come from the batch system (and users can steer them): only strictly inside
an allowed root, as a plain path, never through a symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mom_checkpoint.batch.pointer import open_checkpoint_dir
from mom_checkpoint.platform.errors import NoSuchProcess, Refused


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "ck" / "42.head.CK").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "ck" / "link.CK").symlink_to(tmp_path / "elsewhere")
    return tmp_path / "ck"


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/", "outside the allowed roots"),
        ("//", "outside the allowed roots"),
        ("/tmp", "outside the allowed roots"),
        ("{root}", "outside the allowed roots"),  # the root itself is not a job's folder
        ("{root}x/42.head.CK", "outside the allowed roots"),  # a sibling that shares the prefix
        ("{root}/../elsewhere", "not a plain absolute path"),
        ("{root}/./42.head.CK", "not a plain absolute path"),
        ("{root}//42.head.CK", "not a plain absolute path"),
        ("{root}/link.CK", "symlink"),
    ],
)
def test_refused(root: Path, path: str, words: str) -> None:
    with pytest.raises(Refused, match=words):
        open_checkpoint_dir(path.format(root=root), [str(root)])


def test_missing_is_no_such_folder_and_a_good_one_opens(root: Path) -> None:
    with pytest.raises(NoSuchProcess, match="does not exist"):
        open_checkpoint_dir(f"{root}/43.head.CK", [str(root)])
    fd = open_checkpoint_dir(f"{root}/42.head.CK/", [str(root)])
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(root / "42.head.CK"))
    finally:
        os.close(fd)

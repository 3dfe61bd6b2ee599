"""safefs.walk stops listing a folder as soon as its entries pass the limit (issue 25 #3): a user's
folder of a million entries costs root no more than the limit, never a listing and sort of it all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.safefs import UnsafePath


@pytest.fixture
def big() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mom-checkpoint-walk-"))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(5000):
            os.close(os.open(f"f{i:05d}", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class _Counted:
    """os.scandir, counting the entries it hands out."""

    def __init__(self) -> None:
        self.yielded = 0

    def __call__(self, target: int) -> _Listing:
        return _Listing(self, real_scandir(target))


real_scandir = os.scandir


class _Listing:
    def __init__(self, counter: _Counted, listing: Any) -> None:
        self.entries: Iterator[os.DirEntry[str]] = listing
        self.counter = counter
        self.listing = listing

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.listing.close()

    def __iter__(self) -> _Listing:
        return self

    def __next__(self) -> os.DirEntry[str]:
        entry = next(self.entries)
        self.counter.yielded += 1
        return entry


def test_a_folder_past_the_limit_is_refused_while_it_is_listed(
    big: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = _Counted()
    monkeypatch.setattr(os, "scandir", counted)
    fd = os.open(big, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(UnsafePath, match="more than 1000 entries"):
            safefs.walk(fd, max_entries=1000)
    finally:
        os.close(fd)
    # the 1001st entry ends the walk: the other 3,999 were never handed out, let alone sorted
    assert counted.yielded == 1001, counted.yielded


def test_a_folder_within_the_limit_is_walked_whole_and_sorted(big: Path) -> None:
    fd = os.open(big, os.O_RDONLY | os.O_DIRECTORY)
    try:
        entries = safefs.walk(fd, max_entries=5000)
        with pytest.raises(UnsafePath):
            safefs.walk(fd, max_entries=4999)
    finally:
        os.close(fd)
    assert [e.path for e in entries] == [f"f{i:05d}" for i in range(5000)]


def test_the_limit_counts_what_was_found_in_folders_before(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        for i in range(6):
            (tmp_path / sub / f"{i}").touch()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(safefs.walk(fd, max_entries=14)) == 14
        with pytest.raises(UnsafePath):
            safefs.walk(fd, max_entries=13)
    finally:
        os.close(fd)

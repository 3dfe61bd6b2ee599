"""verification: the page files' check that runs while CRIU restores (check_digests_meanwhile)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mom_checkpoint.image.hashing import ImageFile
from mom_checkpoint.image.verification import check_digests_meanwhile
from mom_checkpoint.platform.errors import VerificationFailed
from tests.helpers import digest_of


def _image(base: Path, sizes: dict[str, int]) -> list[ImageFile]:
    (base / "image").mkdir(parents=True)
    files = []
    for name, size in sizes.items():
        data = os.urandom(size)
        (base / "image" / name).write_bytes(data)
        files.append(ImageFile(f"image/{name}", size, digest_of(data)))
    return files


def test_the_files_are_opened_before_the_call_returns(tmp_path: Path) -> None:
    """mom-restart acts as the job's user (seteuid, for every thread) to open the job's output files
    while the pages are hashed: the hashing thread must not open anything itself. Here every name is
    gone the moment the call returns, and the check still reads the very files it was given."""
    files = _image(tmp_path / "staged", {"pages-1.img": 9 << 20, "pages-2.img": 70_000})
    pending = check_digests_meanwhile(tmp_path, files, read_from=tmp_path / "staged", deadline=None)
    shutil.rmtree(tmp_path / "staged")
    pending.result()


def test_a_mismatch_or_another_size_is_a_refusal(tmp_path: Path) -> None:
    files = _image(tmp_path / "staged", {"pages-1.img": 9 << 20})
    victim = tmp_path / "staged" / "image" / "pages-1.img"
    with open(victim, "r+b") as fh:  # one byte flipped (writing a fixed byte may write the same one)
        fh.seek(5 << 20)
        byte = fh.read(1)[0]
        fh.seek(5 << 20)
        fh.write(bytes([byte ^ 0xFF]))
    pending = check_digests_meanwhile(tmp_path, files, read_from=tmp_path / "staged", deadline=None)
    with pytest.raises(VerificationFailed, match=r"pages-1\.img has changed since the checkpoint"):
        pending.result()
    os.truncate(victim, 100)
    with pytest.raises(VerificationFailed, match="size 100"):  # refused at once, before any restore
        check_digests_meanwhile(tmp_path, files, read_from=tmp_path / "staged", deadline=None)


def test_a_cancelled_check_stops_at_its_next_chunk(tmp_path: Path) -> None:
    """A restart that failed meanwhile cancels the check of the pages: it stops instead of hashing on."""
    files = _image(tmp_path / "staged", {"pages-1.img": 64 << 20})
    pending = check_digests_meanwhile(tmp_path, files, read_from=tmp_path / "staged", deadline=None)
    pending.cancel()
    assert pending.done(timeout=10)
    with pytest.raises(VerificationFailed, match="cancelled"):
        pending.result()

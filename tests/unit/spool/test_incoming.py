"""The folder a generation is written into (storage.Spool.begin): made 0700 by its owner's rules, under
a name nobody can predict, never an existing folder taken over."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mom_checkpoint.spool import storage


def test_a_new_folder_is_private_and_unpredictable(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        made = {storage._new_private_dir(tmp_path, ".incoming-") for _ in range(20)}
    finally:
        os.umask(old)
    assert len(made) == 20
    for path in made:
        assert path.parent == tmp_path and path.name.startswith(".incoming-")
        assert len(path.name) - len(".incoming-") == 12  # 48 random bits
        assert stat.S_IMODE(path.lstat().st_mode) == 0o700


def test_a_name_that_exists_is_never_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name already there (a user's folder, a symlink to one) is skipped, not reused."""
    draws = iter([b"\x00" * 6, b"\x00" * 6, b"\x01" * 6])
    monkeypatch.setattr(os, "urandom", lambda n: next(draws))
    planted = tmp_path / ".incoming-000000000000"
    planted.symlink_to(tmp_path / "elsewhere")
    made = storage._new_private_dir(tmp_path, ".incoming-")
    assert made.name == ".incoming-010101010101"
    assert planted.is_symlink() and not (tmp_path / "elsewhere").exists()


def test_no_free_name_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "urandom", lambda n: b"\x00" * n)
    (tmp_path / ".incoming-000000000000").mkdir()
    with pytest.raises(FileExistsError):
        storage._new_private_dir(tmp_path, ".incoming-")

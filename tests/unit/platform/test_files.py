"""platform.files: a small file of root's replaced all at once, with its mode whatever the umask, and
never through a link planted at its name."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mom_checkpoint.platform.files import replace_in, replace_private


def test_the_mode_does_not_depend_on_the_callers_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would make a 0600 file 0400
    try:
        replace_private(tmp_path / "state.json", "{}")
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            replace_in(fd, "metrics.prom", b"x 1\n", mode=0o644)
        finally:
            os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "metrics.prom").stat().st_mode) == 0o644


def test_a_link_at_the_name_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's")
    (tmp_path / "holder").symlink_to(victim)
    replace_private(tmp_path / "holder", "new")
    assert victim.read_text() == "root's"
    assert not (tmp_path / "holder").is_symlink() and (tmp_path / "holder").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holder", "victim"], "a temporary was left"

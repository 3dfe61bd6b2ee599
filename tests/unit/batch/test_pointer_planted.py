"""Issue 25 #7, the parts the hook's own run does not show: a file system that cannot swap two entries,
another user planting again and again while root makes the job's folder, a restart that only reads,
and the folders where nothing is moved (not TORQUE's, not shared)."""

from __future__ import annotations

import errno
import os
import pwd
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mom_checkpoint.batch.pointer import open_checkpoint_dir
from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.errors import NoSuchProcess, Refused
from tests.helpers import RecordingLog, make_base, remove_base

JOB = (4242, 4242)  # the job's owner: no account needed, root gives the folder by number

RACER = """
import os, sys
target, name = sys.argv[1], sys.argv[2]
while True:
    try:
        os.symlink(target, name)
    except FileExistsError:
        pass
"""


@pytest.fixture
def root() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root (root makes the job's folder and gives it away)")
    base = make_base()  # other users can pass through it (pytest's tmp_path is root's 0700)
    shared = base / "checkpoint"
    shared.mkdir()
    shared.chmod(0o1777)  # as TORQUE leaves it
    try:
        yield shared
    finally:
        remove_base(base)


def nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody to plant entries as")
        raise


def assert_the_jobs(fd: int, path: Path) -> None:
    try:
        st = os.fstat(fd)
        assert os.path.samestat(st, os.lstat(path)), "the descriptor is not the folder at the name"
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (*JOB, 0o755)
    finally:
        os.close(fd)


def test_without_a_swap_the_plant_is_renamed_away_and_the_name_taken_with_mkdir(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot(dir_fd: int, first: str, second: str) -> None:
        raise OSError(errno.EINVAL, "not on this file system")

    monkeypatch.setattr(safefs, "exchange", cannot)
    (root / "1.head.CK").symlink_to("/etc")
    log = RecordingLog()

    fd = open_checkpoint_dir(f"{root}/1.head.CK", [str(root)], owner=JOB, log=log)

    assert_the_jobs(fd, root / "1.head.CK")
    [moved] = root.glob(".1.head.CK.planted-*")
    assert os.readlink(moved) == "/etc"
    assert [e for e, _ in log.events] == ["checkpoint_dir.planted", "checkpoint_dir.missing"]
    assert log.events[0][1]["moved_to"] == moved.name and log.events[0][1]["kind"] == "symlink"
    assert sorted(p.name for p in root.iterdir()) == sorted(["1.head.CK", moved.name]), "a folder was left"


def test_a_user_planting_in_a_loop_never_keeps_the_name(root: Path) -> None:
    """Another user's process puts a link back the moment the name is free: the swap leaves no such
    moment, so root gets the job's folder every time."""
    them = nobody()
    name = root / "2.head.CK"
    racer = subprocess.Popen(
        [sys.executable, "-c", RACER, "/etc", str(name)],
        user=them.pw_uid,
        group=them.pw_gid,
        extra_groups=[],
    )
    try:
        for _ in range(20):
            deadline = time.monotonic() + 10
            while not name.is_symlink():  # the racer has the name again
                assert time.monotonic() < deadline
                time.sleep(0.001)
            log = RecordingLog()
            fd = open_checkpoint_dir(str(name), [str(root)], owner=JOB, log=log)
            assert_the_jobs(fd, name)
            assert [e for e, _ in log.events] == ["checkpoint_dir.planted"]
            assert log.events[0][1]["uid"] == them.pw_uid
            name.rmdir()  # pbs_mom removes its copy after the server took it
    finally:
        racer.kill()
        racer.wait()
    for moved in root.glob(".2.head.CK.planted-*"):
        assert moved.is_symlink() and os.readlink(moved) == "/etc"


def test_a_plant_that_keeps_coming_back_is_refused_after_a_few_tries(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gone(dir_fd: int, first: str, second: str) -> None:
        raise OSError(errno.ENOENT, "taken away and put back")

    monkeypatch.setattr(safefs, "exchange", gone)
    (root / "3.head.CK").write_text("x")

    with pytest.raises(Refused, match="other users keep putting entries"):
        open_checkpoint_dir(f"{root}/3.head.CK", [str(root)], owner=JOB, log=RecordingLog())
    assert sorted(p.name for p in root.iterdir()) == ["3.head.CK"], "root left folders behind"


def test_a_restart_reads_no_plant_and_makes_nothing(root: Path) -> None:
    (root / "4.head.CK").symlink_to("/etc")
    with pytest.raises(NoSuchProcess, match=r"is a symlink of uid 0, not a folder"):
        open_checkpoint_dir(f"{root}/4.head.CK", [str(root)])
    with pytest.raises(NoSuchProcess, match="does not exist"):
        open_checkpoint_dir(f"{root}/5.head.CK", [str(root)])
    assert sorted(p.name for p in root.iterdir()) == ["4.head.CK"]


@pytest.mark.parametrize(
    ("mode", "key"),
    [
        (0o1777, "pbs_checkpoint_roots"),  # OpenPBS's MOM makes its <job>.CK itself, root's
        (0o777, "torque_checkpoint_roots"),  # others could move root's folder away again
        (0o1755, "torque_checkpoint_roots"),  # root's alone: whatever is there is root's doing
        (0o755, "torque_checkpoint_roots"),
    ],
)
def test_nothing_is_moved_outside_a_shared_torque_folder(root: Path, mode: int, key: str) -> None:
    root.chmod(mode)
    (root / "6.head.CK").symlink_to("/etc")
    log = RecordingLog()
    with pytest.raises(Refused, match="symlink"):
        open_checkpoint_dir(f"{root}/6.head.CK", [str(root)], key, owner=JOB, log=log)
    assert sorted(p.name for p in root.iterdir()) == ["6.head.CK"] and not log.events


def test_the_owners_folder_and_roots_are_used_as_they_are(root: Path) -> None:
    for name, owner in (("7.head.CK", JOB), ("8.head.CK", (0, 0))):
        (root / name).mkdir(mode=0o700)
        os.chown(root / name, *owner)
        log = RecordingLog()
        fd = open_checkpoint_dir(f"{root}/{name}", [str(root)], owner=JOB, log=log)
        try:
            st = os.fstat(fd)
            assert os.path.samestat(st, os.lstat(root / name))
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (owner[0], 0o700), "the folder was changed"
        finally:
            os.close(fd)
        assert not log.events

"""What one user leaves in the spool's shared folders (failed-restore logs, killed restarts' work
folders) never costs another user their logs or a restart without end (issue 25 #8, #9)."""

from __future__ import annotations

import os
from pathlib import Path

from mom_checkpoint.spool.storage import KEPT_LOGS, LOGS, Spool


def test_one_users_failed_restores_never_evict_anothers_logs(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.ensure_root()
    victim = spool.keep_log("1.head", "restore", "the victim's restore log\n", 2001)
    kept = [spool.keep_log(f"{n}.head", "restore", f"attempt {n}\n", 2002) for n in range(KEPT_LOGS + 10)]
    assert victim.exists() and victim.read_text() == "the victim's restore log\n"
    left = sorted(p.name for p in (tmp_path / "spool" / LOGS).iterdir() if p.name.startswith("2002."))
    assert len(left) == KEPT_LOGS  # the attacker's own oldest went
    assert all(path.exists() for path in kept[-KEPT_LOGS:])
    assert not any(path.exists() for path in kept[:10])
    st = os.stat(victim)
    assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o600)


def test_a_killed_restarts_folder_is_removed_within_the_deadline_only(tmp_path: Path) -> None:
    """Issue 25 #8: the work folder of a killed restart (an older version's, whose restorer folder
    was the user's and which a process of theirs may keep filling) was removed by the next restart
    with no deadline, before it got to its own job. Past the deadline the removal stops, the new
    work folder is made all the same, and what is left is the next restart's."""
    import socket
    import time

    spool = Spool(tmp_path / "spool")
    spool.ensure_root()
    restarts = tmp_path / "spool" / ".restarts"
    restarts.mkdir(mode=0o711)
    stale = restarts / f"{socket.gethostname()}.{2**22 + 7}.1"
    (stale / "restorer").mkdir(parents=True)
    for n in range(2000):
        (stale / "restorer" / f"f{n}").touch()
    work = spool.restart_workdir(deadline=time.monotonic() - 1)
    assert work.is_dir() and work.parent == restarts
    assert (stale / "restorer").is_dir(), "the removal went on past its deadline"
    assert os.stat(restarts).st_mode & 0o777 == 0o700 and os.stat(work).st_mode & 0o777 == 0o700
    work.rmdir()  # this restart has ended; the next one (given time) removes the rest
    later = Spool(tmp_path / "spool").restart_workdir(deadline=time.monotonic() + 60)
    assert not stale.exists() and later.is_dir()

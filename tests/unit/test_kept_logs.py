"""Issue 25 #9: the logs of failed restores are kept per owner: one user's many failed restores never
evict another user's kept logs."""

from __future__ import annotations

import os
from pathlib import Path

from mom_checkpoint.storage import KEPT_LOGS, LOGS, Spool


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

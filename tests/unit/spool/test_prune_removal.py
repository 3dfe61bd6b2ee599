"""The files of pruned generations are removed after the hook's call, by a detached process with a time
limit (a user's folders below an image are no reason for a root process to run on)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.spool import pruning, storage
from mom_checkpoint.spool.storage import Spool
from tests.helpers import RecordingLog


def _retired(tmp_path: Path) -> tuple[Spool, list[Path]]:
    spool = Spool(tmp_path / "spool")
    old_run = tmp_path / "spool" / "4711.42.head"
    doomed = old_run / ".pruning-000001-20261130T000000Z"
    (doomed / "image").mkdir(parents=True)
    (doomed / "image" / "pages-1.img").write_bytes(b"x" * 4096)
    return spool, [doomed]


@pytest.mark.parametrize("detached", [True, False])
def test_removal_is_bounded_and_takes_the_emptied_run_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, detached: bool
) -> None:
    spool, retired = _retired(tmp_path)
    deadlines: list[float | None] = []
    from mom_checkpoint.platform.safefs import remove_tree as real

    def recording(path: Path, *, deadline: float | None = None) -> bool:
        deadlines.append(deadline)
        return real(path, deadline=deadline)

    def detach(work: Any) -> None:
        if not detached:
            raise OSError("fork: Resource temporarily unavailable")
        work()  # as the detached child would, here in this process

    monkeypatch.setattr(pruning, "remove_tree", recording)
    log = RecordingLog()
    before = time.monotonic()
    pruning.remove_detached(retired, spool, Environment(detach=detach), log, limit_s=600)
    [deadline] = deadlines
    limit = 600 if detached else pruning.REMOVAL_GRACE_S
    assert deadline is not None and before + limit <= deadline <= time.monotonic() + limit
    assert not retired[0].exists() and not retired[0].parent.exists(), "the emptied run is left"
    assert [e for e, _ in log.events] == ([] if detached else ["prune.not_detached"])


def test_space_a_pruned_generation_still_holds_is_freed_before_the_space_check_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A qhold right after a periodic checkpoint, on a nearly full spool: what that checkpoint pruned may
    still be being removed after it. That space is the job's own: it is freed, then counted."""
    from types import SimpleNamespace

    from mom_checkpoint.platform.errors import DiskFull

    spool, [doomed] = _retired(tmp_path)
    monkeypatch.setattr(Spool, "free_bytes", lambda self: 0 if doomed.exists() else 1 << 40)
    job: Any = SimpleNamespace(resident_bytes=1 << 30)
    storage.check_space(spool, job, 1.5, "42.head", time.monotonic() + 60)
    assert not doomed.exists()
    monkeypatch.setattr(Spool, "free_bytes", lambda self: 0)  # and a spool that is simply full
    with pytest.raises(DiskFull, match="not starting the checkpoint"):
        storage.check_space(spool, job, 1.5, "42.head", time.monotonic() + 60)

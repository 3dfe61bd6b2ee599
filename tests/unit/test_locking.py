"""locking: a busy call names the run that holds the job's lock, even one that took it a moment ago."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mom_checkpoint.platform.errors import Busy
from mom_checkpoint.spool.locking import describe_holder, job_lock, job_lock_path


def test_a_holder_that_has_just_taken_the_lock_is_named(tmp_path: Path) -> None:
    """Twenty calls started together: the winner writes who it is a moment after it took the lock; a
    loser that asks in between waits for that (briefly) instead of saying 'holder unknown'."""
    path = job_lock_path(tmp_path, "42.head")
    holder = path.with_name(path.name + ".holder")
    writer = threading.Timer(0.1, lambda: holder.write_text('{"pid": 4711, "host": "n1", "since": 0}'))
    writer.start()
    try:
        assert describe_holder(path).startswith("pid 4711 on n1")
    finally:
        writer.cancel()
    holder.unlink()
    started = time.monotonic()
    assert describe_holder(path, wait_s=0.05) == "holder unknown"  # and never waits long
    assert time.monotonic() - started < 1


def test_the_busy_message_names_the_holder(tmp_path: Path) -> None:
    argv = ["mom-checkpoint", "1", "42.head"]
    with (
        job_lock(tmp_path, "42.head", argv),
        pytest.raises(Busy, match=r"another checkpoint of job 42\.head is running \(pid "),
        job_lock(tmp_path, "42.head", argv),
    ):
        pass

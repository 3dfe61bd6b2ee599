"""Per-job lock and node-wide checkpoint slots, on kernel file locks (filelock).

A kernel lock dies with its holder, so a crashed or killed run never leaves a stale lock behind; the
``.holder`` file beside a lock only says who holds it, for the "busy" message, and is rewritten by each
new holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import filelock

from mom_checkpoint.platform.errors import Busy, SpoolError
from mom_checkpoint.platform.files import replace_private

LOCK_DIR = ".locks"


def lock_dir(spool_root: Path) -> Path:
    path = spool_root / LOCK_DIR
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise SpoolError(f"cannot create the lock folder {path}: {exc.strerror}") from None
    return path


def job_lock_path(directory: Path, key: str) -> Path:
    """The lock of a job key (jobkey.py's token), or of a bare job id (older versions' locks)."""
    return directory / f"job-{key}.lock"


@contextmanager
def job_lock(
    directory: Path, key: str, argv: Sequence[str], job_id: str | None = None, *, what: str = "checkpoint"
) -> Iterator[None]:
    """Hold the lock of a job key, or raise Busy at once naming the run that holds it. ``what`` names
    the work it guards: "restore" holds a lock of its own (``job-restore-<key>.lock``), so a job's
    restore never waits for its checkpoints nor they for it, but two restores of one job never run
    at once (each stages a copy of the image)."""
    job_id = job_id or key
    path = job_lock_path(directory, key if what == "checkpoint" else f"{what}-{key}")
    with exclusive(path, argv, f"another {what} of job {job_id}"):
        yield


def checkpoint_finished(directory: Path, key: str, timeout_s: float) -> bool:
    """Wait (at most ``timeout_s``) until no checkpoint of the job key runs: True once none does.
    The lock is taken and let go at once: a checkpoint that starts right after finds it free."""
    lock = filelock.FileLock(str(job_lock_path(directory, key)), timeout=max(0.0, timeout_s), mode=0o600)
    try:
        lock.acquire()
    except filelock.Timeout:
        return False
    lock.release()
    return True


@contextmanager
def exclusive(path: Path, argv: Sequence[str], other: str) -> Iterator[None]:
    """Hold the kernel lock at ``path``, or raise Busy at once: "``other`` is running (who holds
    it, from its holder file): not starting a second one"."""
    lock = filelock.FileLock(str(path), timeout=0, mode=0o600)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise Busy(f"{other} is running ({describe_holder(path)}): not starting a second one") from None
    try:
        _write_holder(path, argv)
        yield
    finally:
        lock.release()


def user_share(max_concurrent: int) -> int:
    """How many of the node's ``max_concurrent`` slots one user's checkpoints may hold at once: all but
    one (at least one), so that with two slots or more another user always finds one that no
    checkpoint of this user's holds, however long this user's checkpoints take (a stopped
    checkpointer, a job that makes its dump slow)."""
    return max(1, max_concurrent - 1)


@contextmanager
def node_slot(
    directory: Path,
    max_concurrent: int,
    wait_s: float,
    *,
    uid: int,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> Iterator[int]:
    """Hold one of ``max_concurrent`` node-wide slots for a checkpoint of user ``uid``'s job, waiting at
    most ``wait_s`` in all, raising Busy after that.

    One user's checkpoints may only ever delay that user's own (issue 25 #4): a checkpoint first takes
    one of its user's user_share(max_concurrent) shares (``user-<uid>-<n>.lock``, root's files in
    root's 0700 lock folder: the holder's uid is in the name, the lock is the kernel's and dies with
    its holder), then a node slot. A user's further checkpoints wait for that user's own shares, not
    for the node's slots, so with ``max_concurrent >= 2`` at least one slot is always left to the
    other users. Shares are taken before slots by every caller, so no two calls ever wait on each
    other the other way round."""
    deadline = monotonic() + wait_s
    shares = [directory / f"user-{uid}-{n}.lock" for n in range(user_share(max_concurrent))]
    slots = [directory / f"slot-{n}.lock" for n in range(max_concurrent)]
    with _one_of(shares, deadline, sleep, monotonic) as share:
        if share is None:
            raise Busy(
                f"the job's owner already runs {len(shares)} checkpoint(s) on this node (one user's "
                f"share of max_concurrent={max_concurrent}) and none ended within {wait_s:g}s: try "
                f"again later"
            )
        with _one_of(slots, deadline, sleep, monotonic) as slot:
            if slot is None:
                raise Busy(
                    f"the node already runs max_concurrent={max_concurrent} checkpoints and none ended "
                    f"within {wait_s:g}s: try again later"
                )
            yield slot


@contextmanager
def _one_of(
    paths: Sequence[Path], deadline: float, sleep: Callable[[float], None], monotonic: Callable[[], float]
) -> Iterator[int | None]:
    """Hold the first of ``paths``' locks that is free, trying them all every 0.2 s until
    ``deadline``: yields its index, or None if none came free by then."""
    while True:
        for index, path in enumerate(paths):
            lock = filelock.FileLock(str(path), timeout=0, mode=0o600)
            try:
                lock.acquire()
            except filelock.Timeout:
                continue
            try:
                yield index
            finally:
                lock.release()
            return
        if monotonic() >= deadline:
            yield None
            return
        sleep(0.2)


def _write_holder(lock_path: Path, argv: Sequence[str]) -> None:
    info = {"pid": os.getpid(), "host": os.uname().nodename, "since": time.time(), "argv": list(argv)}
    with contextlib.suppress(OSError):  # only the busy message depends on it
        replace_private(lock_path.with_name(lock_path.name + ".holder"), json.dumps(info))


HOLDER_WAIT_S = 0.3  # how long a busy call waits for a lock's new holder to say who it is


def describe_holder(lock_path: Path, wait_s: float = HOLDER_WAIT_S) -> str:
    """Who holds the lock, from its holder file; a holder that has just taken the lock writes it a
    moment later (calls started together), so a missing file is read again for up to ``wait_s``."""
    holder = lock_path.with_name(lock_path.name + ".holder")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = json.loads(holder.read_text())
            age = time.time() - float(info["since"])
            return f"pid {int(info['pid'])} on {info['host']}, started {age:.0f}s ago"
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                return "holder unknown"
            time.sleep(0.02)
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

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

from mom_checkpoint.errors import Busy, SpoolError
from mom_checkpoint.storage import write_private

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
def job_lock(directory: Path, key: str, argv: Sequence[str], job_id: str | None = None) -> Iterator[None]:
    """Hold the lock of a job key, or raise Busy at once naming the run that holds it."""
    job_id = job_id or key
    path = job_lock_path(directory, key)
    lock = filelock.FileLock(str(path), timeout=0, mode=0o600)
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = describe_holder(path)
        raise Busy(
            f"another checkpoint of job {job_id} is running ({holder}): not starting a second one"
        ) from None
    try:
        _write_holder(path, argv)
        yield
    finally:
        lock.release()


@contextmanager
def node_slot(
    directory: Path,
    max_concurrent: int,
    wait_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> Iterator[int]:
    """Hold one of ``max_concurrent`` node-wide slots, waiting at most ``wait_s`` for one to free up."""
    deadline = monotonic() + wait_s
    while True:
        for slot in range(max_concurrent):
            lock = filelock.FileLock(str(directory / f"slot-{slot}.lock"), timeout=0, mode=0o600)
            try:
                lock.acquire()
            except filelock.Timeout:
                continue
            try:
                yield slot
            finally:
                lock.release()
            return
        if monotonic() >= deadline:
            raise Busy(
                f"the node already runs max_concurrent={max_concurrent} checkpoints and none ended within "
                f"{wait_s:g}s: try again later"
            )
        sleep(0.2)


def _write_holder(lock_path: Path, argv: Sequence[str]) -> None:
    info = {"pid": os.getpid(), "host": os.uname().nodename, "since": time.time(), "argv": list(argv)}
    tmp = lock_path.with_name(lock_path.name + f".holder.{os.getpid()}")
    with contextlib.suppress(OSError):  # only the busy message depends on it
        write_private(tmp, json.dumps(info))
        os.replace(tmp, lock_path.with_name(lock_path.name + ".holder"))


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

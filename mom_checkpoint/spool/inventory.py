"""What the spool holds: every job run and every folder in it, with its status.

Statuses: ``complete`` (a published generation), ``incoming`` (being written by a checkpoint that
holds the job's lock now), ``stale`` (an incoming folder whose writer is gone), ``pruning`` (left by an
interrupted prune), ``unpublished`` (an image set aside after the job had ended), ``broken`` (a
generation name without a readable manifest); with a vault, ``vault-only`` (a generation of the
job in the vault and not in this spool).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import filelock
import msgspec

from mom_checkpoint.batch import interval
from mom_checkpoint.image.layout import GENERATION_NAME, created_epoch
from mom_checkpoint.image.manifest import Manifest
from mom_checkpoint.image.verification import read_trusted_manifest
from mom_checkpoint.platform.errors import Error
from mom_checkpoint.platform.safefs import tree_bytes
from mom_checkpoint.spool import sessions
from mom_checkpoint.spool.locking import LOCK_DIR, job_lock_path
from mom_checkpoint.spool.storage import (
    INCOMING_PREFIX,
    PRUNING_PREFIX,
    RUN_NAME,
    UNPUBLISHED_PREFIX,
    Spool,
    incoming_key,
)

COST_SAMPLES = 10  # the newest generations whose dump times count for a job's checkpoint cost

Status = Literal["complete", "incoming", "stale", "pruning", "unpublished", "broken", "vault-only"]


class Entry(msgspec.Struct, frozen=True):
    job_id: str
    exec_pid: int
    path: Path
    status: Status
    number: int | None
    created: float  # seconds since the epoch
    size: int
    backend: str | None = None
    newest: bool = False  # the newest complete generation of its job key
    problem: str | None = None
    owner_key: str | None = None  # the job key (system.uid.job id) of its job, when known (jobkey.py)
    vault: bool | None = None  # a complete copy is in the vault (None: no vault, or it cannot be read)

    @property
    def group(self) -> str:
        """What retention counts generations within: the job key, else the job id."""
        return self.owner_key or self.job_id

    @property
    def run_dir(self) -> Path:
        return self.path.parent


def scan(spool: Spool, job_id: str | None = None) -> list[Entry]:
    """Every folder of every job run (or of one job), sorted by job, then number/time."""
    entries: list[Entry] = []
    try:
        runs = sorted(os.scandir(spool.root), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    for run in runs:
        match = RUN_NAME.fullmatch(run.name)
        if not match or not run.is_dir(follow_symlinks=False):
            continue
        if job_id is not None and match.group(2) != job_id:
            continue
        entries += _scan_run(spool, Path(run.path), int(match.group(1)), match.group(2))
    newest: dict[str, Entry] = {}
    for entry in entries:
        if entry.status == "complete" and entry.number is not None:
            current = newest.get(entry.group)
            if current is None or (current.number or 0) < entry.number:
                newest[entry.group] = entry
    marked = [msgspec.structs.replace(e, newest=True) if newest.get(e.group) is e else e for e in entries]
    return sorted(marked, key=lambda e: (e.job_id, e.number if e.number is not None else 1 << 62, e.created))


def _scan_run(spool: Spool, run: Path, exec_pid: int, job_id: str) -> list[Entry]:
    """The entries of one run folder; whatever one of them holds (a user's image in job-user mode), it
    is reported on its own line and never stops the others."""
    found = []
    try:
        items = sorted(os.scandir(run), key=lambda e: e.name)
    except OSError as exc:
        return [
            Entry(job_id, exec_pid, run, "broken", None, 0.0, 0, problem=f"cannot list it: {exc.strerror}")
        ]
    for item in items:
        try:
            entry = _entry(spool, item, exec_pid, job_id)
        except (OSError, ValueError) as exc:
            entry = Entry(job_id, exec_pid, Path(item.path), "broken", None, 0.0, 0, problem=str(exc))
        if entry is not None:
            found.append(entry)
    return found


def _entry(spool: Spool, item: os.DirEntry[str], exec_pid: int, job_id: str) -> Entry | None:
    path = Path(item.path)
    if not item.is_dir(follow_symlinks=False):
        return None
    match = GENERATION_NAME.fullmatch(item.name)
    if match:
        number = int(match.group(1))
        created = created_epoch(match.group(2))
        try:
            manifest = read_trusted_manifest(path)
        except Error as exc:
            return Entry(job_id, exec_pid, path, "broken", number, created, _du(path), problem=exc.message)
        size, backend, key = manifest.total_bytes, manifest.backend.name, manifest.key.token
        return Entry(job_id, exec_pid, path, "complete", number, created, size, backend, owner_key=key)
    status: Status | None = None
    owner_key = None
    if item.name.startswith(INCOMING_PREFIX):
        owner_key = incoming_key(path)
        status = "incoming" if _lock_held(spool, owner_key or job_id) else "stale"
    elif item.name.startswith(PRUNING_PREFIX):
        status = "pruning"
    elif item.name.startswith(UNPUBLISHED_PREFIX):
        status = "unpublished"
    if status is None:
        return None
    mtime = item.stat(follow_symlinks=False).st_mtime
    return Entry(job_id, exec_pid, path, status, None, mtime, _du(path), owner_key=owner_key)


def _lock_held(spool: Spool, key: str) -> bool:
    """Whether a checkpoint of the job key (or, for an older version's folder, the job id) runs now:
    it holds that lock."""
    path = job_lock_path(spool.root / LOCK_DIR, key)
    if not path.exists():
        return False
    lock = filelock.FileLock(str(path), timeout=0, mode=0o600)
    try:
        lock.acquire()
    except filelock.Timeout:
        return True
    lock.release()
    return False


def job_is_running(spool: Spool, manifest: Manifest) -> bool:
    """Whether the job of this manifest still runs on this node: its exec PID with the same start
    time, or a live restart process recorded for its job key."""
    key = manifest.key
    if sessions.lookup(spool.root, key.system, key.job_id, key.uid) is not None:
        return True
    for process in manifest.processes[:1]:
        from mom_checkpoint.processes.discovery import process_start_time

        start = process_start_time(process.pid)
        if start is not None and abs(start - process.start_time) < 1.0:
            return True
    return False


def _du(path: Path) -> int:
    return tree_bytes(path)


def measured_cost(spool: Spool, job_id: str, limit: int = COST_SAMPLES) -> tuple[float, int]:
    """The job's checkpoint cost in seconds and how many generations it comes from (ValueError: none)."""
    samples = []
    for generation in spool.job_generations(job_id)[-limit:]:
        try:
            samples.append(read_trusted_manifest(generation.path).times.dump_s)
        except Error:
            continue
    return interval.typical_cost(samples), len(samples)

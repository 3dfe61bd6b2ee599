"""``prune``: remove old generations and leftovers, each job under its own lock."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import msgspec

from mom_checkpoint.image.layout import Generation
from mom_checkpoint.image.verification import read_trusted_manifest
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.errors import Busy, Error
from mom_checkpoint.platform.safefs import remove_tree
from mom_checkpoint.spool import inventory, retention, sessions
from mom_checkpoint.spool.locking import LOCK_DIR, job_lock, lock_dir
from mom_checkpoint.spool.retention import Candidate, Verdict
from mom_checkpoint.spool.storage import Spool


class Decision(msgspec.Struct, frozen=True):
    entry: inventory.Entry
    keep: bool
    reason: str
    done: bool  # removed (or, with --dry-run, would be)


def run(
    config: Config,
    *,
    keep: int | None,
    older_than_s: float | None,
    job_id: str | None,
    dry_run: bool,
    include_running: bool = False,
    now: float | None = None,
) -> list[Decision]:
    spool = Spool(config.spool_dir)
    now = time.time() if now is None else now
    if keep is None and older_than_s is None:
        keep = config.keep
    entries = {str(e.path): e for e in inventory.scan(spool, job_id)}
    # generations count within their job key: the same job id of another batch system or owner is
    # another job
    running = {
        group: _running(spool, group, list(entries.values())) for group in {e.group for e in entries.values()}
    }
    candidates = [
        Candidate(key, e.group, e.status, e.number, now - e.created, running[e.group])
        for key, e in entries.items()
    ]
    verdicts = retention.plan_prune(
        candidates, keep=keep, older_than_s=older_than_s, include_running=include_running
    )
    decisions: list[Decision] = []
    for job in sorted({entries[v.item.key].job_id for v in verdicts}):
        mine = [v for v in verdicts if entries[v.item.key].job_id == job]
        decisions += _apply(spool, job, mine, entries, dry_run)
    if not dry_run:
        forget_gone_jobs(spool)
    return decisions


def forget_gone_jobs(spool: Spool) -> list[Path]:
    """The locks and session records of jobs that have nothing left in the spool: a session record
    whose restart process has ended, and the lock (and holder note) of a job key, or an older
    version's job id, with no folder left. A lock is removed only while held, so no checkpoint can
    hold it meanwhile. Returns what was removed."""
    left = inventory.scan(spool)
    keys = {e.owner_key for e in left if e.owner_key} | {e.job_id for e in left}
    removed: list[Path] = []
    locks = spool.root / LOCK_DIR
    for path in sorted(locks.glob("job-*.lock")) if locks.is_dir() else []:
        key = path.name[len("job-") : -len(".lock")]
        if key in keys:
            continue
        try:
            with job_lock(locks, key, ["prune"]):
                for doomed in (path, path.with_name(path.name + ".holder")):
                    with contextlib.suppress(FileNotFoundError):
                        doomed.unlink()
                        removed.append(doomed)
        except Busy:
            continue  # a checkpoint of it runs now: it is not gone
    records = spool.root / sessions.SESSIONS_DIR
    for path in sorted(records.glob("*.json")) if records.is_dir() else []:
        if sessions.live(path) is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _apply(
    spool: Spool,
    job: str,
    verdicts: list[Verdict[Candidate]],
    entries: dict[str, inventory.Entry],
    dry_run: bool,
) -> list[Decision]:
    doomed = [v for v in verdicts if not v.keep]
    if dry_run or not doomed:
        return [Decision(entries[v.item.key], v.keep, v.reason, not v.keep) for v in verdicts]
    # every key that has folders of this job id, and the job id itself (older versions' lock): no
    # checkpoint of any of them runs while prune removes
    keys = sorted({key for v in verdicts if (key := entries[v.item.key].owner_key)} | {job})
    try:
        with contextlib.ExitStack() as held:
            for key in keys:
                held.enter_context(job_lock(lock_dir(spool.root), key, ["prune"], job))
            for verdict in doomed:
                entry = entries[verdict.item.key]
                if entry.status == "complete" and entry.number is not None:
                    spool.drop(Generation(entry.path, entry.number, ""))
                else:
                    remove_tree(entry.path)
            for run_dir in {entries[v.item.key].run_dir for v in doomed}:
                spool.remove_if_empty(run_dir)
    except Busy:
        return [
            Decision(entries[v.item.key], True, "a checkpoint of the job runs now: not touched", False)
            for v in verdicts
        ]
    return [Decision(entries[v.item.key], v.keep, v.reason, not v.keep) for v in verdicts]


def _running(spool: Spool, group: str, entries: list[inventory.Entry]) -> bool:
    newest = [e for e in entries if e.group == group and e.newest]
    if not newest:
        return False
    try:
        record = read_trusted_manifest(Path(newest[0].path))
    except Error:
        return False
    return inventory.job_is_running(spool, record)

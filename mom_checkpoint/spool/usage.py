"""Who uses the spool: the bytes of each user's complete generations, from the manifests root wrote.

The spool is shared by every user's jobs on the node. ``user_quota_gib`` bounds what one user's
generations may hold, and when the spool as a whole is full, root's log says whose generations take
the space (never the job's comment: that is shown to the job's user).
"""

from __future__ import annotations

import os
from collections import Counter

import msgspec

from mom_checkpoint.platform.errors import DiskFull, Error
from mom_checkpoint.processes.discovery import JobProcesses
from mom_checkpoint.spool.storage import RUN_NAME, Spool, mib


class Usage(msgspec.Struct, frozen=True):
    by_uid: Counter[int]  # bytes of complete generations per owner uid
    by_job: dict[tuple[int, str], list[tuple[int, int]]]  # (uid, job id) -> [(number, bytes)], oldest first


def scan(spool: Spool) -> Usage:
    """Every complete generation whose manifest root wrote; the others are not counted (a generation
    root cannot vouch for is not charged to anyone)."""
    from mom_checkpoint.image.verification import read_trusted_manifest  # a hook needs it only for a quota

    by_uid: Counter[int] = Counter()
    by_job: dict[tuple[int, str], list[tuple[int, int]]] = {}
    try:
        runs = [entry for entry in os.scandir(spool.root) if RUN_NAME.fullmatch(entry.name)]
    except OSError:
        return Usage(by_uid, by_job)
    for run in runs:
        if not run.is_dir(follow_symlinks=False):
            continue
        for generation in spool.generations(spool.root / run.name):
            try:
                manifest = read_trusted_manifest(generation.path)
            except (Error, OSError):
                continue
            by_uid[manifest.job.uid] += manifest.total_bytes
            by_job.setdefault((manifest.job.uid, manifest.job.id), []).append(
                (generation.number, manifest.total_bytes)
            )
    for generations in by_job.values():
        generations.sort()
    return Usage(by_uid, by_job)


def after_checkpoint(usage: Usage, uid: int, job_id: str, keep: int, new_bytes: int) -> int:
    """What the user's generations will hold once this checkpoint is complete and the job pruned to
    ``keep``: the new generation in, the job's oldest beyond ``keep`` out."""
    mine = usage.by_job.get((uid, job_id), [])
    kept_before = mine[-(keep - 1) :] if keep > 1 else []
    dropped = sum(size for _, size in mine) - sum(size for _, size in kept_before)
    return usage.by_uid.get(uid, 0) - dropped + new_bytes


def biggest_users(spool: Spool, most: int = 5) -> list[tuple[int, int]]:
    """The owners whose generations take most of the spool: (uid, bytes), the biggest first."""
    return scan(spool).by_uid.most_common(most)


class Quota(msgspec.Struct, frozen=True):
    """``user_quota_gib``: what the job's user's generations may hold once this one is in and the job
    pruned, checked on the estimate before the dump and on the real size before publishing."""

    usage: Usage
    uid: int
    user: str
    job_id: str
    keep: int
    limit: int

    @classmethod
    def of(cls, spool: Spool, quota_gib: float, job: JobProcesses, job_id: str, keep: int) -> Quota | None:
        if quota_gib <= 0:
            return None
        quota = cls(scan(spool), job.uid, job.user, job_id, keep, int(quota_gib * 2**30))
        quota.check(job.resident_bytes + job.swap_bytes, "this checkpoint (about the job's memory)")
        return quota

    def check(self, new_bytes: int, what: str) -> None:
        after = after_checkpoint(self.usage, self.uid, self.job_id, self.keep, new_bytes)
        if after > self.limit:
            now = self.usage.by_uid.get(self.uid, 0)
            raise DiskFull(
                f"{self.user}'s checkpoints on this node hold {mib(now)}; with {what} they would hold "
                f"{mib(after)}, more than user_quota_gib allows ({mib(self.limit)}): not keeping it, the "
                f"job keeps running (fewer generations: qsub -c depth=N; or remove old ones)"
            )

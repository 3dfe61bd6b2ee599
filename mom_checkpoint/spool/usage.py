"""Who uses the spool: the bytes of each user's complete generations, from the manifests root wrote.

The spool is shared by every user's jobs on the node. ``user_quota_gib`` bounds what one user's
generations may hold, and when the spool as a whole is full, root's log says whose generations take
the space (never the job's comment: that is shown to the job's user).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from mom_checkpoint.image.verification import read_trusted_manifest
from mom_checkpoint.platform.errors import Error
from mom_checkpoint.spool.storage import RUN_NAME, Spool


@dataclass(frozen=True)
class Usage:
    by_uid: Counter[int]  # bytes of complete generations per owner uid
    by_job: dict[tuple[int, str], list[tuple[int, int]]]  # (uid, job id) -> [(number, bytes)], oldest first


def scan(spool: Spool) -> Usage:
    """Every complete generation whose manifest root wrote; the others are not counted (a generation
    root cannot vouch for is not charged to anyone)."""
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

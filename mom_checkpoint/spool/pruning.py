"""Pruning a job's generations after its new one is complete: each retired by one rename at once,
their files removed after the call."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mom_checkpoint.batch.jobkey import JobKey
from mom_checkpoint.image.layout import Generation
from mom_checkpoint.image.verification import read_trusted_manifest
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import Error
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.platform.safefs import remove_tree
from mom_checkpoint.spool import retention
from mom_checkpoint.spool.storage import Spool

REMOVAL_GRACE_S = 10.0  # what removing may take here when it cannot be detached (the rest: next call's)


def retire_beyond(
    spool: Spool, key: JobKey, keep: int, current_run: Path, log: Logger
) -> tuple[list[Path], list[Path]]:
    """Retire the job key's generations beyond ``keep`` (only ever after a new one is complete: one
    rename each; their files are removed after the call, remove_detached) and remove emptied runs. A
    generation of the same job id from another batch system or owner, or one whose manifest root
    cannot vouch for, is never this job's to prune. Returns the generations pruned and their new
    paths."""
    removed, retired = [], []
    for verdict in retention.plan(_generations_of(spool, key), keep):
        if not verdict.keep:
            retired.append(spool.retire(verdict.item))
            removed.append(verdict.item.path)
            log.info("generation.pruned", path=str(verdict.item.path), reason=verdict.reason)
    for run_dir in spool.runs_of(key.job_id):
        if run_dir != current_run and not any(os.scandir(run_dir)):
            os.rmdir(run_dir)
    return removed, retired


def _generations_of(spool: Spool, key: JobKey) -> list[Generation]:
    mine = []
    for generation in spool.job_generations(key.job_id):
        try:
            if read_trusted_manifest(generation.path).key == key:
                mine.append(generation)
        except Error:
            continue
    return mine


def remove_detached(
    retired: list[Path], spool: Spool, env: Environment, log: Logger, *, limit_s: float
) -> None:
    """Remove the pruned generations' files after this call, in a detached process: pbs_mom does not
    wait for the disk to free a large image (they were taken out of the generation names already).
    It stops after ``limit_s`` (timeout_s: a user's folders below an image are no reason to run on),
    and whatever it leaves, the job's next call removes before its dump. If it cannot be started,
    the files are removed here, within REMOVAL_GRACE_S."""
    if not retired:
        return

    def remove(deadline: float) -> None:
        for path in retired:
            remove_tree(path, deadline=deadline)
            spool.remove_if_empty(path.parent)  # a run of the job's that nothing else is left in

    try:
        env.detach(lambda: remove(time.monotonic() + limit_s))
    except OSError as exc:
        log.warning("prune.not_detached", error=str(exc))
        remove(env.monotonic() + REMOVAL_GRACE_S)

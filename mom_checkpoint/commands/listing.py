"""``list [JOB_ID]``: every job run and generation on the node."""

from __future__ import annotations

from mom_checkpoint import inventory
from mom_checkpoint.config import Config
from mom_checkpoint.errors import NoCheckpoint
from mom_checkpoint.storage import Spool


def run(config: Config, job_id: str | None = None) -> list[inventory.Entry]:
    spool = Spool(config.spool_dir)
    entries = inventory.scan(spool, job_id)
    if job_id is not None and not entries:
        raise NoCheckpoint(f"job {job_id} has nothing in {spool.root}")
    return entries

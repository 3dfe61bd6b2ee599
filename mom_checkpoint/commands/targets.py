"""``JOB_ID|GENERATION_DIR`` as the admin commands take it."""

from __future__ import annotations

from pathlib import Path

from mom_checkpoint.calls import path_part
from mom_checkpoint.errors import NoCheckpoint
from mom_checkpoint.storage import MANIFEST, Spool


def resolve(spool: Spool, target: str) -> Path:
    """A generation folder: a path as given, or the job's newest complete generation."""
    if "/" in target:
        path = Path(target)
        if not (path / MANIFEST).exists() and not path.is_dir():
            raise NoCheckpoint(f"{target} is not a generation folder")
        return path
    job_id = path_part("JOB_ID", target)
    newest = spool.newest(job_id)
    if newest is None:
        raise NoCheckpoint(f"job {job_id} has no complete checkpoint in {spool.root}")
    return newest.path

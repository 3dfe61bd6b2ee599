"""``verify JOB_ID|GENERATION_DIR``: re-hash every file against the manifest, as restart does."""

from __future__ import annotations

from pathlib import Path

from mom_checkpoint.image import verification
from mom_checkpoint.image.hashing import Progress
from mom_checkpoint.image.manifest import Manifest
from mom_checkpoint.platform.config import Config
from mom_checkpoint.spool.storage import Spool
from mom_checkpoint.vault import targets


def run(
    config: Config, target: str, progress: Progress | None = None, *, vault: bool = False
) -> tuple[Path, Manifest]:
    generation = targets.resolve(
        Spool(config.spool_dir), target, targets.vault_dir(config) if vault else None
    )
    record = verification.read_trusted_manifest(generation)
    # in job-user mode the image folder is its owner's (their checkpointer wrote it); root's record
    # says who that is
    allowed = {0, record.job.uid} if record.backend.run_as == "job-user" else {0}
    manifest = verification.verify(generation, allowed_uids=frozenset(allowed), progress=progress)
    return generation, manifest

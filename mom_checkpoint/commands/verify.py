"""``verify JOB_ID|GENERATION_DIR``: re-hash every file against the manifest, as restart does."""

from __future__ import annotations

from pathlib import Path

from mom_checkpoint.image import verification
from mom_checkpoint.image.hashing import Progress
from mom_checkpoint.image.manifest import Manifest


def run(generation: Path, manifest: Manifest, progress: Progress | None = None) -> None:
    """Check the generation (as ``show.run`` found it, with its manifest) as a restore would."""
    # in job-user mode the image folder is its owner's (their checkpointer wrote it); root's record
    # says who that is
    allowed = {0, manifest.job.uid} if manifest.backend.run_as == "job-user" else {0}
    verification.verify(generation, manifest, allowed_uids=frozenset(allowed), progress=progress)

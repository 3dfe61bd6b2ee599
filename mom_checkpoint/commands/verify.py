"""``verify JOB_ID|GENERATION_DIR``: re-hash every file against the manifest, as restart does."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mom_checkpoint import verification
from mom_checkpoint.commands import targets
from mom_checkpoint.config import Config
from mom_checkpoint.hashing import Progress
from mom_checkpoint.manifest import Manifest
from mom_checkpoint.storage import IMAGE, Spool


def run(config: Config, target: str, progress: Progress | None = None) -> tuple[Path, Manifest]:
    generation = targets.resolve(Spool(config.spool_dir), target)
    allowed = {0, os.geteuid()}
    if config.run_as == "job-user":
        with contextlib.suppress(OSError):
            allowed.add((generation / IMAGE).lstat().st_uid)
    manifest = verification.verify(generation, allowed_uids=frozenset(allowed), progress=progress)
    return generation, manifest

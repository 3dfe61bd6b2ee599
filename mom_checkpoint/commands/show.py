"""``show JOB_ID|GENERATION_DIR``: a generation's manifest (read, not verified: see ``verify``)."""

from __future__ import annotations

from pathlib import Path

from mom_checkpoint.commands import targets
from mom_checkpoint.config import Config
from mom_checkpoint.manifest import Manifest
from mom_checkpoint.storage import Spool
from mom_checkpoint.verification import read_trusted_manifest


def run(config: Config, target: str, *, vault: bool = False) -> tuple[Path, Manifest]:
    generation = targets.resolve(
        Spool(config.spool_dir), target, targets.vault_dir(config) if vault else None
    )
    return generation, read_trusted_manifest(generation)

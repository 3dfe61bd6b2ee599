"""``show JOB_ID|GENERATION_DIR``: a generation's manifest (read, not verified: see ``verify``)."""

from __future__ import annotations

from mom_checkpoint.image.verification import TrustedGeneration
from mom_checkpoint.platform.config import Config
from mom_checkpoint.spool.storage import Spool
from mom_checkpoint.vault import targets


def run(config: Config, target: str, *, vault: bool = False) -> TrustedGeneration:
    generation = targets.resolve(
        Spool(config.spool_dir), target, targets.vault_dir(config) if vault else None
    )
    return TrustedGeneration.read(generation)

"""``verify JOB_ID|GENERATION_DIR``: check a generation as a restore would: its layout, then every
file's digest against the manifest."""

from __future__ import annotations

from mom_checkpoint.image.hashing import Progress
from mom_checkpoint.image.verification import TrustedGeneration


def run(generation: TrustedGeneration, progress: Progress | None = None) -> None:
    """Check the generation (as ``show.run`` found it, with root's manifest) as a restore would."""
    generation.verified().check_digests(progress=progress)

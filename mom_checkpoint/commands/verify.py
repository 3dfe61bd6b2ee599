"""``verify JOB_ID|GENERATION_DIR``: check a generation as a restore would: its layout, then every
file's digest against the manifest; in the vault, every chunk of a generation stored as chunks."""

from __future__ import annotations

from mom_checkpoint.image.hashing import Progress
from mom_checkpoint.image.verification import TrustedGeneration
from mom_checkpoint.vault.index import has_index


def run(generation: TrustedGeneration, progress: Progress | None = None) -> None:
    """Check the generation (as ``show.run`` found it, with root's manifest) as a restore would."""
    if has_index(generation.path):  # a vault generation stored as chunks: its bytes are its owner's
        from mom_checkpoint.vault.store import Vault

        Vault(generation.path.parent.parent).check_chunked(generation.path, generation.manifest, progress)
        return
    generation.verified().check_digests(progress=progress)

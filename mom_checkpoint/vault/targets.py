"""``JOB_ID|GENERATION_DIR`` as the admin commands take it."""

from __future__ import annotations

from pathlib import Path

from mom_checkpoint.batch.calls import path_part
from mom_checkpoint.image.layout import MANIFEST
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.errors import NoCheckpoint, UsageError
from mom_checkpoint.spool.storage import Spool


def resolve(spool: Spool, target: str, vault_dir: str | None = None) -> Path:
    """A generation folder: a path as given, or the job's newest complete generation (in the vault at
    ``vault_dir`` when given)."""
    if vault_dir is not None and "/" not in target:
        return _in_vault(vault_dir, path_part("JOB_ID", target))
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


def _in_vault(vault_dir: str, job_id: str) -> Path:
    from mom_checkpoint.vault.store import Vault

    vault = Vault(vault_dir)
    vault.check_root()
    copies = [g for token in vault.job_keys(job_id) for g in vault.generations(token)]
    if not copies:
        raise NoCheckpoint(f"job {job_id} has no complete checkpoint in the vault {vault.root}")
    return max(copies, key=lambda g: g.number).path


def vault_dir(config: Config) -> str:
    """--vault: the configured vault, or a usage error."""
    if not config.vault_dir:
        raise UsageError("--vault: vault_dir is not set in the configuration")
    return config.vault_dir

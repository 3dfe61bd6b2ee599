"""``list [JOB_ID]``: every job run and generation on the node, and with a vault, which of them are
in it and which are there only."""

from __future__ import annotations

import msgspec

from mom_checkpoint.image.layout import created_epoch
from mom_checkpoint.image.verification import read_trusted_manifest
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.errors import Error, NoCheckpoint
from mom_checkpoint.spool import inventory
from mom_checkpoint.spool.storage import Spool


def run(config: Config, job_id: str | None = None) -> list[inventory.Entry]:
    spool = Spool(config.spool_dir)
    entries = inventory.scan(spool, job_id)
    if config.vault_dir:
        entries = _with_vault(entries, config.vault_dir, job_id)
    if job_id is not None and not entries:
        raise NoCheckpoint(f"job {job_id} has nothing in {spool.root}")
    return entries


def _with_vault(entries: list[inventory.Entry], vault_dir: str, job_id: str | None) -> list[inventory.Entry]:
    """Each complete generation marked in the vault or not; the vault's generations this spool does
    not have added as vault-only. A vault that cannot be read leaves the list as the spool's."""
    from mom_checkpoint.vault.store import Vault

    vault = Vault(vault_dir)
    try:
        vault.check_root()
        held = {(token, g.name): g for token in vault.job_keys(job_id) for g in vault.generations(token)}
    except Error:
        return entries
    local = {(e.owner_key, e.path.name) for e in entries if e.status == "complete"}
    marked = [
        msgspec.structs.replace(e, vault=(e.owner_key, e.path.name) in held) if e.status == "complete" else e
        for e in entries
    ]
    for (token, name), generation in sorted(held.items()):
        if (token, name) in local:
            continue
        try:
            manifest = read_trusted_manifest(generation.path)
        except Error as exc:
            problem: str | None = exc.message
            exec_pid, size, backend = 0, 0, None
        else:
            problem, exec_pid, size, backend = (
                None,
                manifest.job.exec_pid,
                manifest.total_bytes,
                manifest.backend.name,
            )
        created = created_epoch(generation.created)
        marked.append(
            inventory.Entry(
                token.split(".", 2)[2], exec_pid, generation.path, "vault-only", generation.number, created,
                size, backend, problem=problem, owner_key=token, vault=True,
            )
        )  # fmt: skip
    return sorted(marked, key=lambda e: (e.job_id, e.number if e.number is not None else 1 << 62, e.created))

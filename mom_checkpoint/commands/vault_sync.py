"""``vault-sync``: copy the newest complete generation of each job (or of one) into the vault.

The hook starts the same copy for its job after each checkpoint (vault/sync.py), and the timer that
runs ``tick`` runs this for every job of the node: whatever a failed or killed copy left is done by
the next.
"""

from __future__ import annotations

from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import ConfigError
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.vault.sync import Copy, sync


def run(config: Config, env: Environment, log: Logger, job_id: str | None = None) -> list[Copy]:
    if not config.vault_dir:
        raise ConfigError("vault_dir is not set in the configuration: there is no vault to copy to")
    return sync(config, env, log, job_id)

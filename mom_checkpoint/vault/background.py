"""The hook's last step: the copy of the job's new generation to the vault, started detached.

This module imports nothing of the copier: the hook's call, which pbs_mom waits for, pays for none of
its modules (their import is the copier's, after the hook has ended).
"""

from __future__ import annotations

import os
import time

from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import Error
from mom_checkpoint.platform.log import Logger

HOOK_EXIT_WAIT_S = 5.0  # the copier waits this long at most for the hook to end


def start_detached(config: Config, env: Environment, job_id: str, log: Logger) -> None:
    """Copy the job's new generation to the vault in a detached process (its own session, out of
    pbs_mom's pipes and the job's session); a vault that is slow, full or gone never fails or delays
    the checkpoint. What it does goes to the log."""
    hook = os.getpid()

    def copy() -> None:
        from mom_checkpoint.vault.sync import lower_priority, sync

        # the hook it was forked from is still finishing pbs_mom's call: the copy (hashing the whole
        # image on every CPU it gets) starts once the hook has ended, at the lowest priority
        lower_priority()
        waited = time.monotonic() + HOOK_EXIT_WAIT_S
        while _running(hook) and time.monotonic() < waited:
            time.sleep(0.01)
        from mom_checkpoint.platform.log import make_logger

        own_log = make_logger(config.log_file, program="mom-checkpoint", command="vault-sync")
        try:
            sync(config, env, own_log, job_id=job_id)
        except Error as exc:
            own_log.error("vault.sync_failed", job_id=job_id, error=exc.message)
        except Exception as exc:  # a bug: said in the log, as the CLI says it for a command
            own_log.exception("vault.sync_crashed", job_id=job_id, error=f"{type(exc).__name__}: {exc}")
            raise

    try:
        env.detach(copy)
    except OSError as exc:
        log.warning("vault.not_started", error=str(exc))


def _running(pid: int) -> bool:
    """Whether the process runs (not a zombie waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False

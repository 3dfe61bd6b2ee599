"""Checkpointer backends, chosen by the config's ``backend`` key."""

from __future__ import annotations

from mom_checkpoint.backends.base import Backend, DumpRequest, DumpResult
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.processes.identity import JobUser

__all__ = ["Backend", "DumpRequest", "DumpResult", "JobUser", "create"]


def create(config: Config, env: Environment) -> Backend:
    if config.backend == "criu":
        from mom_checkpoint.backends.criu import CriuBackend

        return CriuBackend(config, env)
    if config.backend == "psnc":
        from mom_checkpoint.backends.psnc import PsncBackend

        return PsncBackend(config, env)
    from mom_checkpoint.backends.blcr import BlcrBackend

    return BlcrBackend(config, env)

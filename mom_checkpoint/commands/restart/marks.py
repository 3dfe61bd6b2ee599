"""The job's mark in TORQUE: checkpoint_restart_status, as TORQUE's sample restart script sets it."""

from __future__ import annotations

from mom_checkpoint.commands.restart.calls import RestartCall, TorqueRestart
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import ProgramMissing
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.platform.programs import find_program


def mark(call: RestartCall, status: str, *, config: Config, env: Environment, log: Logger) -> None:
    """TORQUE's sample restart script marks the job with checkpoint_restart_status through qalter."""
    if not isinstance(call, TorqueRestart) or call.convention != "torque":
        return  # OpenPBS has no checkpoint_restart_status
    try:
        qalter = find_program(config.qalter, "qalter")
    except ProgramMissing:
        log.info("qalter.missing", detail=f"{config.qalter} not found: checkpoint_restart_status not set")
        return
    completed = env.runner.run(
        [qalter, "-W", f"checkpoint_restart_status={status}", call.job_id], timeout_s=30
    )
    log.info("qalter.done", exit_status=completed.returncode, stderr=completed.stderr.strip()[-200:])

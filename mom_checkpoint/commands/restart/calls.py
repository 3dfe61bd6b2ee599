"""What a restart is asked: pbs_mom's $restart_script, OpenPBS's restart action, the seed's flow."""

from __future__ import annotations

import msgspec

from mom_checkpoint.batch.calls import TorqueJobArgs


class TorqueRestart(TorqueJobArgs, frozen=True):
    argv: tuple[str, ...]

    convention = "torque"
    cwd: str | None = None


class PbsRestart(TorqueRestart, frozen=True):
    """OpenPBS's ``$action restart`` with ``$restart_transmogrify true``: this process becomes the task
    in a new session and stays in the foreground until the restored application ends."""

    task_id: int = 1

    convention = "openpbs"


class SeedRestart(msgspec.Struct, frozen=True):
    job_id: str | None  # --job: the newest complete generation of that job
    image: str | None  # --image: this generation folder
    cwd: str | None
    argv: tuple[str, ...]
    own: bool = False  # through sudo from a user's job script: only the caller's own checkpoints

    convention = "seed"


RestartCall = TorqueRestart | SeedRestart

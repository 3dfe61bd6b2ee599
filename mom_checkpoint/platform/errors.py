"""Every error the programs report on purpose: each class carries its exit status and message template.

The CLI maps an ``Error`` to one line on stderr and its ``exit_status``; anything else is a bug (70).
"""

from __future__ import annotations

from typing import ClassVar

from mom_checkpoint.platform.status import ExitStatus


class Error(Exception):
    """Base class: ``template`` is formatted with the positional arguments."""

    exit_status: ClassVar[ExitStatus] = ExitStatus.SOFTWARE
    template: ClassVar[str] = "{}"

    def __init__(self, *args: object) -> None:
        super().__init__(*args)

    @property
    def message(self) -> str:
        try:
            return self.template.format(*self.args)
        except (IndexError, KeyError, ValueError):  # arguments the template cannot take
            return " ".join(str(arg) for arg in self.args)

    def __str__(self) -> str:
        return self.message


class UsageError(Error):
    exit_status = ExitStatus.USAGE


class ConfigError(Error):
    exit_status = ExitStatus.CONFIG
    template = "config {}: {}"


class NoSuchProcess(Error):
    exit_status = ExitStatus.NO_PROCESS


class UnknownUser(Error):
    exit_status = ExitStatus.NO_USER


class ProgramMissing(Error):
    """A program the node needs (a batch system's client, setpriv) is not installed where looked for."""

    exit_status = ExitStatus.UNAVAILABLE


class CheckpointerMissing(ProgramMissing):
    """The configured checkpointer (or its restorer) is not installed."""


class SpoolError(Error):
    exit_status = ExitStatus.CANT_CREATE


class StorageIOError(Error):
    exit_status = ExitStatus.IO_ERROR


class DiskFull(StorageIOError):
    pass


class Busy(Error):
    exit_status = ExitStatus.BUSY


class NotCheckpointable(Error):
    """The job holds what the checkpointer cannot dump (an RDMA or GPU device...), or runs on other
    nodes as well: refused before the dump, the job untouched."""

    exit_status = ExitStatus.NOT_CHECKPOINTABLE


class Refused(Error):
    """Refused for safety: an unsafe path, a symlink, a folder others can write, a wrong owner."""

    exit_status = ExitStatus.NO_PERMISSION


class CheckpointerFailed(Error):
    exit_status = ExitStatus.CHECKPOINTER_FAILED


class TimedOut(Error):
    exit_status = ExitStatus.TIMED_OUT


class VerificationFailed(Error):
    exit_status = ExitStatus.DATA_ERROR


class PidInUse(Error):
    """CRIU restores the image's own PIDs: one of them is taken on this node."""

    exit_status = ExitStatus.PID_IN_USE
    template = (
        "PID {} of the image is in use on this node: CRIU restores the original PIDs; wait until that "
        "process has ended, or restart the job on another node"
    )


class NotYetInVault(Error):
    """The batch system names a checkpoint made on another node that has not reached the vault yet:
    restoring an older one would bring back state the job has already left behind."""

    exit_status = ExitStatus.NOT_YET_IN_VAULT
    template = (
        "the checkpoint {} of job {} is neither on this node nor in the vault yet (still being copied "
        "from the node that made it?): not restoring an older one; try again once it is there"
    )


class CpuIncompatible(Error):
    """This node's CPU lacks an instruction-set feature of the CPU the job was checkpointed on (the
    restored application would die of SIGILL): refused before anything of the job is touched."""

    exit_status = ExitStatus.CPU_INCOMPATIBLE


class NoCheckpoint(Error):
    exit_status = ExitStatus.NO_PROCESS


class TorqueUnavailable(Error):
    """tick and advise: TORQUE's qstat failed or did not answer (pbs_server down, not authorised)."""

    exit_status = ExitStatus.UNAVAILABLE


class TorqueOutputError(Error):
    """tick and advise: qstat answered something that cannot be read."""

    exit_status = ExitStatus.DATA_ERROR


def shown(text: str, limit: int) -> str:
    """``text`` as it can stand in a one-line message, in at most ``limit`` characters: as it is when
    it is printable ASCII, else quoted with every other character escaped (no newline, no control
    character, no non-ASCII survives); cut with "..." when longer."""
    limit = max(limit, 8)
    plain = text.isascii() and text.isprintable()
    body = text if plain else ascii(text)[1:-1]
    room = limit if plain else limit - 2
    if len(body) > room:
        body = body[: room - 3] + "..."
    return body if plain else f"'{body}'"

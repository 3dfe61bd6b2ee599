"""Exit statuses: sysexits-style, documented in the README (one place, used by every program)."""

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    CHECKS_FAILED = 1  # doctor: at least one check failed
    USAGE = 64  # wrong arguments: count, format, unsafe job id or name
    DATA_ERROR = 65  # an image or manifest that fails verification
    NO_PROCESS = 66  # the job's process does not exist or is not the job's
    NO_USER = 67  # EUSER/EGROUP unknown on this node
    UNAVAILABLE = 69  # the checkpointer binary is missing or not runnable
    SOFTWARE = 70  # internal error (a bug): the log has the traceback
    CANT_CREATE = 73  # the spool or a folder in it cannot be created
    IO_ERROR = 74  # I/O error or disk full
    BUSY = 75  # another checkpoint of the same job is running, or the node is at max_concurrent
    NO_PERMISSION = 77  # refused for safety: unsafe path, symlink, wrong owner or mode
    CONFIG = 78  # the configuration file is invalid
    CHECKPOINTER_FAILED = 80  # the checkpointer ran and reported failure
    TIMED_OUT = 81  # the checkpointer ran past timeout_s and was killed
    # restart failures of their own, so that accounting (TORQUE records a failed restart script's
    # code as the job's exit status) tells a PID squatted on this node from a copy still travelling
    PID_IN_USE = 82  # a PID of the image is held on this node by a process not the job's
    NOT_YET_IN_VAULT = 83  # the checkpoint the batch system names is on neither this node nor the vault yet
    NOT_CHECKPOINTABLE = 84  # the job holds a device CRIU cannot dump, or runs on other nodes too
    CPU_INCOMPATIBLE = 85  # this node's CPU lacks a feature of the CPU the checkpoint was taken on


# What each status means, in the product's words alone: text that reaches a batch system's command
# line or a job's attributes (qalter's checkpoint_restart_status) is chosen from here, never built
# from anything a user wrote (a pointer, a path, a checkpointer's log).
MEANING = {
    ExitStatus.USAGE: "bad arguments",
    ExitStatus.DATA_ERROR: "the checkpoint failed verification",
    ExitStatus.NO_PROCESS: "no checkpoint or process of the job",
    ExitStatus.NO_USER: "unknown user",
    ExitStatus.UNAVAILABLE: "checkpointer missing",
    ExitStatus.SOFTWARE: "internal error",
    ExitStatus.CANT_CREATE: "spool unusable",
    ExitStatus.IO_ERROR: "I/O error or disk full",
    ExitStatus.BUSY: "busy",
    ExitStatus.NO_PERMISSION: "refused for safety",
    ExitStatus.CONFIG: "invalid configuration",
    ExitStatus.CHECKPOINTER_FAILED: "the checkpointer failed",
    ExitStatus.TIMED_OUT: "timed out",
    ExitStatus.PID_IN_USE: "a PID of the checkpoint is in use on this node",
    ExitStatus.NOT_YET_IN_VAULT: "the checkpoint has not reached the vault yet",
    ExitStatus.NOT_CHECKPOINTABLE: "the job cannot be checkpointed (a device it holds or other nodes)",
    ExitStatus.CPU_INCOMPATIBLE: "the CPU here lacks a feature of the checkpointed CPU",
}


def meaning(status: ExitStatus) -> str:
    return MEANING.get(status, status.name.lower().replace("_", " "))

"""The ways pbs_mom (and the seed's set-up) call the hook, told apart by their argument count.

- TORQUE, 8 arguments: ``SESSION_ID JOB_ID EUSER EGROUP CHECKPOINT_DIR CHECKPOINT_NAME SIGNAL DEPTH``
  (``-`` for a missing value).
- seed, 2 arguments: ``JOB_PID JOB_ID``.

Any other count is refused: pbs_mom joins the arguments into a shell command, so a user's
``qsub -c 'dir=/x y'`` arrives as extra words.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec
from msgspec.structs import asdict

from mom_checkpoint.platform.errors import UsageError

MISSING = "-"
MAX_PART = 200
# Job ids as TORQUE writes them: "42.head.example.org", array jobs "42[3].head"; names "ckpt.42.head.1732..."
_PATH_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+\-\[\]]*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
SIGNALS = (0, 15)
T = TypeVar("T")


class TorqueJobArgs(msgspec.Struct, frozen=True):
    """The six arguments TORQUE gives both its checkpoint and its restart script."""

    session_id: int
    job_id: str
    euser: str | None
    egroup: str | None
    checkpoint_dir: str | None
    checkpoint_name: str | None


class TorqueCall(TorqueJobArgs, frozen=True):
    signal: int
    depth: int | None
    argv: tuple[str, ...]

    convention = "torque"

    @property
    def abort(self) -> bool:
        return self.signal == 15

    @property
    def top_pid(self) -> int:
        return self.session_id


class SeedCall(msgspec.Struct, frozen=True):
    job_pid: int
    job_id: str
    argv: tuple[str, ...]

    convention = "seed"
    euser: str | None = None
    egroup: str | None = None
    signal = 0
    depth: int | None = None
    checkpoint_dir: str | None = None
    checkpoint_name: str | None = None

    @property
    def abort(self) -> bool:
        return False

    @property
    def top_pid(self) -> int:
        return self.job_pid


class PbsCall(msgspec.Struct, frozen=True):
    """OpenPBS's ``$action checkpoint|checkpoint_abort`` line (OPENPBS.md), one call per task:
    ``--pbs ACTION %jobid %sid %taskid %login %path``."""

    job_id: str  # the job in the spool: %jobid for the first task, "<jobid>+task<N>" for the others
    session_id: int  # the task's session (%sid)
    task_id: int
    euser: str
    path: str  # %path: <checkpoint path>/<jobid>.CK/<task id as 8 hex digits>
    abort: bool  # checkpoint_abort (qhold): end the task after a good checkpoint
    argv: tuple[str, ...]

    convention = "openpbs"
    egroup: str | None = None
    depth: int | None = None

    @property
    def signal(self) -> int:
        return 15 if self.abort else 0

    @property
    def top_pid(self) -> int:
        return self.session_id

    @property
    def checkpoint_dir(self) -> str:
        return posixpath.dirname(self.path)

    @property
    def checkpoint_name(self) -> str:
        return posixpath.basename(self.path)


CheckpointCall = TorqueCall | SeedCall | PbsCall
PBS_ACTIONS = ("checkpoint", "checkpoint_abort", "restart")


class PbsArgs(msgspec.Struct, frozen=True):
    """The parsed ``--pbs`` words, for the checkpoint actions and for restart alike."""

    action: str
    job_id: str
    session_id: int  # negated by MOM at restart: the old session, given here as a positive pid
    task_id: int
    euser: str
    path: str
    argv: tuple[str, ...]


def parse_pbs_args(argv: Sequence[str]) -> PbsArgs:
    """``--pbs ACTION JOBID SID TASKID LOGIN PATH``: every word checked; PATH must be the task's own
    ``<...>/<JOBID>.CK/<TASKID as 8 hex digits>`` as OpenPBS's MOM builds it."""
    args = tuple(argv)
    if len(args) != 7 or args[0] != "--pbs":
        raise UsageError(
            f"expected --pbs ACTION %jobid %sid %taskid %login %path (7 words), got {len(args)}: "
            f"refusing (see the README's OpenPBS lines)"
        )
    action, job_id, sid, task, login, path = args[1:]
    if action not in PBS_ACTIONS:
        raise UsageError(f"ACTION must be one of {', '.join(PBS_ACTIONS)}, got {quoted(action)}")
    job = path_part("%jobid", job_id)
    session = pid_arg("%sid", sid[1:] if sid.startswith("-") else sid)  # negated at restart
    if not task.isascii() or not task.isdigit() or len(task) > 9 or int(task) < 1:
        raise UsageError(f"%taskid must be a task number, got {quoted(task)}")
    user = name_arg("%login", login)
    where = abs_path_arg("%path", path)
    expected = f"{job}.CK/{int(task):08X}"
    if not where.endswith("/" + expected) or posixpath.normpath(where) != where:
        raise UsageError(f"%path {quoted(where)} is not this task's checkpoint path (.../{expected})")
    return PbsArgs(action, job, session, int(task), user, where, args)


def task_storage_id(job_id: str, task_id: int) -> str:
    """Each task of a job is checkpointed on its own, with its own generations and retention: the
    first under the job's id, the others as <jobid>+task<N>."""
    return job_id if task_id == 1 else path_part("JOB_ID", f"{job_id}+task{task_id}")


def pbs_checkpoint_call(args: PbsArgs) -> PbsCall:
    return PbsCall(
        job_id=task_storage_id(args.job_id, args.task_id),
        session_id=args.session_id,
        task_id=args.task_id,
        euser=args.euser,
        path=args.path,
        abort=args.action == "checkpoint_abort",
        argv=args.argv,
    )


def torque_job_args(args: Sequence[str]) -> TorqueJobArgs:
    session, job_id, euser, egroup, ckdir, ckname = args
    return TorqueJobArgs(
        session_id=pid_arg("SESSION_ID", session),
        job_id=path_part("JOB_ID", job_id),
        euser=optional(name_arg, "EUSER", euser),
        egroup=optional(name_arg, "EGROUP", egroup),
        checkpoint_dir=optional(abs_path_arg, "CHECKPOINT_DIR", ckdir),
        checkpoint_name=optional(path_part, "CHECKPOINT_NAME", ckname),
    )


def parse_checkpoint_call(argv: Sequence[str]) -> CheckpointCall:
    args = tuple(argv)
    if len(args) == 8:
        job = asdict(torque_job_args(args[:6]))
        return TorqueCall(**job, signal=signal_arg(args[6]), depth=depth_arg(args[7]), argv=args)
    if len(args) == 2:
        return SeedCall(job_pid=pid_arg("JOB_PID", args[0]), job_id=path_part("JOB_ID", args[1]), argv=args)
    raise UsageError(
        f"expected 8 arguments (SESSION_ID JOB_ID EUSER EGROUP CHECKPOINT_DIR CHECKPOINT_NAME SIGNAL DEPTH) "
        f"or 2 (JOB_PID JOB_ID), got {len(args)}: refusing (a checkpoint attribute with spaces splits "
        f"into extra arguments)"
    )


def optional(check: Callable[[str, str], T], label: str, value: str) -> T | None:
    return None if value == MISSING else check(label, value)


def pid_arg(label: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise UsageError(f"{label} must be a process id, got {quoted(value)}")
    pid = int(value)
    if pid <= 1:
        raise UsageError(f"{label} must be a process id above 1, got {pid}")
    return pid


def path_part(label: str, value: str) -> str:
    """A job id or checkpoint name that will become one path component: refused unless plainly safe."""
    if value == MISSING and label == "JOB_ID":
        raise UsageError("JOB_ID is missing ('-')")
    if not value:
        raise UsageError(f"{label} is empty")
    if len(value) > MAX_PART:
        raise UsageError(f"{label} is longer than {MAX_PART} characters")
    if ".." in value or not _PATH_PART.fullmatch(value):
        raise UsageError(
            f"{label} {quoted(value)} is not safe as a file name "
            f"(allowed: letters, digits and _ . @ + - [ ], no '..', no '/')"
        )
    return value


def name_arg(label: str, value: str) -> str:
    if len(value) > 64 or not _NAME.fullmatch(value):
        raise UsageError(f"{label} {quoted(value)} is not a user or group name")
    return value


def abs_path_arg(label: str, value: str) -> str:
    if not value.startswith("/") or len(value) > 4096 or not value.isprintable():
        raise UsageError(f"{label} must be an absolute path, got {quoted(value)}")
    return value


def signal_arg(value: str) -> int:
    if value == MISSING:
        return 0
    if value.isascii() and value.isdigit() and int(value) in SIGNALS:
        return int(value)
    raise UsageError(
        f"SIGNAL must be 0 (checkpoint and continue) or 15 (checkpoint and end), got {quoted(value)}"
    )


def depth_arg(value: str) -> int | None:
    """TORQUE's depth=N: the number of images to keep. '-' or 0 means not given (config keep applies)."""
    if value == MISSING:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 6:
        raise UsageError(f"DEPTH must be a number of images to keep or '-', got {quoted(value)}")
    return int(value) or None


def quoted(value: str, limit: int = 60) -> str:
    """Quote a value for an error line: control characters escaped, long values cut."""
    shown = value if len(value) <= limit else value[:limit] + "..."
    return repr(shown)

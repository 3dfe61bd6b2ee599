"""Restart: bring a job back from its newest complete, verified generation, and stay its task.

pbs_mom runs the restart program as fork + setsid + execv and from then on treats it as the job: the
job ends when it exits, and qdel signals its session. So the restored application runs as this
process's child in this session (CRIU: --restore-detached --restore-sibling), signals are forwarded
to it, and the application's exit status becomes this process's.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from mom_checkpoint import backends, sessions
from mom_checkpoint.backends.base import InheritedFile, JobUser, RestoreRequest, locate
from mom_checkpoint.config import Config
from mom_checkpoint.environment import Environment
from mom_checkpoint.errors import (
    CheckpointerMissing,
    Error,
    NoCheckpoint,
    NoSuchProcess,
    PidInUse,
    Refused,
    StorageIOError,
    UnknownUser,
)
from mom_checkpoint.manifest import Manifest
from mom_checkpoint.pointer import open_checkpoint_dir, read_pointer
from mom_checkpoint.storage import IMAGE, Owner, Spool, remove_tree
from mom_checkpoint.verification import verify

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)
_GENERATION_PATH = re.compile(r"(\d+)\.(.+)/(\d{6,}-\d{8}T\d{6}Z)")
# Files the application wrote to (O_WRONLY or O_RDWR) are handed back; devices are left to CRIU.
_WRITE_MODES = os.O_WRONLY | os.O_RDWR


@dataclass(frozen=True)
class TorqueRestart:
    session_id: int
    job_id: str
    euser: str | None
    egroup: str | None
    checkpoint_dir: str | None
    checkpoint_name: str | None
    argv: tuple[str, ...]

    convention = "torque"
    cwd: str | None = None


@dataclass(frozen=True)
class PbsRestart(TorqueRestart):
    """OpenPBS's ``$action restart`` with ``$restart_transmogrify true``: this process becomes the task
    in a new session and stays in the foreground until the restored application ends."""

    task_id: int = 1

    convention = "openpbs"


@dataclass(frozen=True)
class SeedRestart:
    job_id: str | None  # --job: the newest complete generation of that job
    image: str | None  # --image: this generation folder
    cwd: str | None
    argv: tuple[str, ...]
    own: bool = False  # through sudo from a user's job script: only the caller's own checkpoints

    convention = "seed"


RestartCall = TorqueRestart | SeedRestart


def run(call: RestartCall, config: Config, env: Environment, log: Any) -> int:
    """Restore the job and wait for it; return the application's exit status."""
    try:
        return _restart(call, config, env, log)
    except Error as exc:
        _mark(call, f"Failed to restart job: {exc.message}", config=config, env=env, log=log)
        raise


def _restart(call: RestartCall, config: Config, env: Environment, log: Any) -> int:
    caller = _sudo_caller(call, env)
    spool = Spool(config.spool_dir)
    backend = backends.create(config, env)
    binary = backend.find_restore_binary()
    generation = _resolve(call, spool, config, log)
    expected_job = call.job_id if call.job_id is not None else None
    allowed = {0, os.geteuid()}
    if config.run_as == "job-user":
        allowed |= {_owner_uid(generation)}
    manifest = verify(generation, allowed_uids=frozenset(allowed), expected_job=expected_job)
    job_id = manifest.job.id
    log = log.bind(job_id=job_id, generation=manifest.generation.number, path=str(generation))
    if isinstance(call, TorqueRestart) and call.euser is not None and call.euser != manifest.job.user:
        raise Refused(f"{generation} is {manifest.job.user}'s checkpoint, not {call.euser}'s: refusing")
    if caller is not None:
        if manifest.job.uid != caller.uid:
            raise Refused(f"{generation} is {manifest.job.user}'s checkpoint, not {caller.name}'s: refusing")
        if call.cwd is not None:
            _check_cwd(call.cwd, caller)
    if backend.name == "criu":
        _check_pids_free(manifest)
    user = JobUser(manifest.job.user, manifest.job.uid, manifest.job.gid)
    log.info("restart.start", convention=call.convention, argv=list(call.argv), backend=backend.name)
    if os.geteuid() == 0 and caller is None:
        sessions.record(spool.root, job_id, os.getpid())  # the next checkpoint finds the job through us
    forwarder = _Forwarder()
    with forwarder, _workdir(spool, user if config.run_as == "job-user" else None) as workdir:
        with _output_files(manifest, user) as inherited:
            request = RestoreRequest(
                image_dir=generation / IMAGE,
                pids=[p.pid for p in manifest.processes],
                user=user,
                cwd=call.cwd,
                workdir=workdir,
                inherited=inherited,
                timeout_s=config.timeout_s,
            )
            restored = backend.restore(binary, request)
        log.info("restart.running", pid=restored.pid, command=restored.command)
        _mark(call, "Successfully restarted job", config=config, env=env, log=log)
        status = forwarder.wait(restored.pid)
    log.info("restart.ended", pid=restored.pid, exit_status=status)
    return status


def _resolve(call: RestartCall, spool: Spool, config: Config, log: Any) -> Path:
    if isinstance(call, SeedRestart) and call.image is not None:
        path = Path(call.image)
        if not path.is_dir():
            raise NoCheckpoint(f"{call.image} is not a generation folder")
        return path
    job_id = call.job_id
    assert job_id is not None
    if isinstance(call, TorqueRestart) and call.checkpoint_dir and call.checkpoint_name:
        pointed = _follow_pointer(call, spool, config, log)
        if pointed is not None:
            return pointed
    newest = spool.newest(job_id)
    if newest is None:
        raise NoCheckpoint(f"job {job_id} has no complete checkpoint in {spool.root}")
    log.info("restart.newest", job_id=job_id, path=str(newest.path))
    return newest.path


def _follow_pointer(call: TorqueRestart, spool: Spool, config: Config, log: Any) -> Path | None:
    """The generation named at CHECKPOINT_DIR/CHECKPOINT_NAME, if that is usable; None to fall back.

    A CHECKPOINT_DIR outside the allowed roots is refused outright; a missing or unusable pointer
    (pbs_mom deletes the folder after a failed checkpoint) falls back to the newest generation.
    """
    assert call.checkpoint_dir is not None and call.checkpoint_name is not None
    try:
        dir_fd = open_checkpoint_dir(call.checkpoint_dir, *config.checkpoint_roots(call.convention))
    except NoSuchProcess as exc:
        log.warning("restart.pointer_missing", error=exc.message)
        return None
    try:
        pointer = read_pointer(call.checkpoint_name, dir_fd=dir_fd)
    except StorageIOError as exc:
        log.warning("restart.pointer_unusable", error=exc.message)
        return None
    finally:
        os.close(dir_fd)
    target = Path(os.path.normpath(pointer.generation))
    relative = os.path.relpath(target, spool.root)
    match = _GENERATION_PATH.fullmatch(relative)
    if pointer.job_id != call.job_id or match is None or match.group(2) != call.job_id:
        raise Refused(
            f"the pointer {call.checkpoint_name} names {pointer.generation}, "
            f"not a checkpoint of job {call.job_id} in {spool.root}"
        )
    if not target.is_dir():
        log.warning("restart.pointer_stale", path=str(target))
        return None
    return target


def _sudo_caller(call: RestartCall, env: Environment) -> JobUser | None:
    """With --own: the user who ran sudo (None when that is root, who may restart any job).

    sudo sets SUDO_UID itself and a user cannot override it; without sudo (or not as root) --own
    cannot know whom to restrict the restart to, so it refuses.
    """
    if not (isinstance(call, SeedRestart) and call.own):
        return None
    raw = env.environ.get("SUDO_UID", "")
    if os.geteuid() != 0 or not raw.isdigit():
        raise Refused("--own is for sudo: run it as sudo -n mom-restart --own ... (see the README)")
    uid = int(raw)
    if uid == 0:
        return None
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise UnknownUser(f"SUDO_UID {uid} is not a user on this node") from None
    return JobUser(entry.pw_name, uid, entry.pw_gid)


def _check_cwd(cwd: str, user: JobUser) -> None:
    """--own: the working directory must be one the calling user may enter."""
    try:
        with _as_user(user):
            os.close(os.open(cwd, os.O_RDONLY | os.O_DIRECTORY))
    except OSError as exc:
        raise Refused(f"--cwd {cwd}: {exc.strerror} for {user.name}") from None


def _owner_uid(generation: Path) -> int:
    try:
        return (generation / IMAGE).lstat().st_uid
    except OSError:
        return 0


def _check_pids_free(manifest: Manifest) -> None:
    """CRIU restores the original PIDs: name the first one taken (a zombie takes it too)."""
    for process in manifest.processes:
        try:
            proc = psutil.Process(process.pid)
            zombie = ", a zombie not yet reaped" if proc.status() == psutil.STATUS_ZOMBIE else ""
            holder = f"{process.pid} (now {proc.name()}{zombie}, user {proc.username()})"
        except psutil.NoSuchProcess:
            continue
        except psutil.Error:
            holder = str(process.pid)
        raise PidInUse(holder)


@contextlib.contextmanager
def _workdir(spool: Spool, user: JobUser | None) -> Iterator[Path]:
    """Under the spool when root (a restart killed with -9 leaves it there for the next one to
    clean); a private temporary folder otherwise."""
    if os.geteuid() == 0:
        path = spool.restart_workdir(Owner(user.uid, user.gid) if user is not None else Owner(0, 0))
    else:
        path = Path(tempfile.mkdtemp(prefix="mom-restart-"))
    try:
        yield path
    finally:
        remove_tree(path)


@contextlib.contextmanager
def _output_files(manifest: Manifest, user: JobUser) -> Iterator[list[InheritedFile]]:
    """Open the files the application was writing, in append mode and with the job user's rights.

    pbs_mom re-creates the job's .OU/.ER files before a restart, and a job checkpointed with
    --leave-running wrote on after the checkpoint: CRIU would refuse the changed sizes. Handing it
    these descriptors (--inherit-fd) lets the application continue writing at their end.
    """
    paths = sorted(
        {
            fd.target
            for process in manifest.processes
            for fd in process.fds
            if fd.kind == "file"
            and fd.flags is not None
            and fd.flags & _WRITE_MODES
            and not fd.target.startswith(("/dev/", "/proc/", "/sys/"))
            and not fd.target.endswith(" (deleted)")
        }
    )
    opened: list[InheritedFile] = []
    try:
        with _as_user(user):
            for path in paths:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                opened.append(InheritedFile(fd, path))
        yield opened
    except PermissionError as exc:
        raise Refused(f"cannot open {exc.filename} as {user.name}: {exc.strerror}") from None
    finally:
        for inherited in opened:
            os.close(inherited.fd)


@contextlib.contextmanager
def _as_user(user: JobUser) -> Iterator[None]:
    """Root opens the job's files with the job user's rights (a manifest can name any path)."""
    if os.geteuid() != 0 or user.uid == 0:
        yield
        return
    groups = os.getgroups()
    os.setgroups(os.getgrouplist(user.name, user.gid))
    os.setegid(user.gid)
    os.seteuid(user.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


class _Forwarder:
    """Pass the signals pbs_mom (or a user) sends to this process on to the restored application."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> _Forwarder:
        for sig in FORWARDED:
            self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.pid is None:
            self.pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def wait(self, pid: int) -> int:
        self.pid = pid
        for signum in self.pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code


def _mark(call: RestartCall, status: str, *, config: Config, env: Environment, log: Any) -> None:
    """TORQUE's sample restart script marks the job with checkpoint_restart_status through qalter."""
    if not isinstance(call, TorqueRestart) or call.convention != "torque":
        return  # OpenPBS has no checkpoint_restart_status
    try:
        qalter = locate(config.qalter, "qalter")
    except CheckpointerMissing:
        log.info("qalter.missing", detail=f"{config.qalter} not found: checkpoint_restart_status not set")
        return
    completed = env.runner.run(
        [qalter, "-W", f"checkpoint_restart_status={status}", call.job_id], timeout_s=30
    )
    log.info("qalter.done", exit_status=completed.returncode, stderr=completed.stderr.strip()[-200:])

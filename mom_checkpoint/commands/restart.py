"""Restart: bring a job back from its newest complete, verified generation, and stay its task.

pbs_mom runs the restart program as fork + setsid + execv and from then on treats it as the job: the
job ends when it exits, and qdel signals its session. So the restored application runs as this
process's child in this session (CRIU: --restore-detached --restore-sibling), signals are forwarded
to it, and the application's exit status becomes this process's.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from mom_checkpoint import backends
from mom_checkpoint.backends.base import InheritedFile, Restored, RestoreRequest, locate
from mom_checkpoint.batch.calls import TorqueJobArgs
from mom_checkpoint.batch.jobkey import SYSTEMS, JobKey, system_of
from mom_checkpoint.batch.pointer import open_checkpoint_dir, read_pointer
from mom_checkpoint.image.hashing import ImageFile
from mom_checkpoint.image.layout import GENERATION_NAME
from mom_checkpoint.image.manifest import KeptFile, Manifest
from mom_checkpoint.image.staging import StagedImage
from mom_checkpoint.image.verification import (
    InBackground,
    check_digests,
    check_digests_meanwhile,
    check_layout,
    read_trusted_manifest,
)
from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import (
    CheckpointerMissing,
    Error,
    NoCheckpoint,
    NoSuchProcess,
    NotYetInVault,
    PidInUse,
    Refused,
    StorageIOError,
)
from mom_checkpoint.platform.files import copy_all
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.platform.status import ExitStatus, meaning
from mom_checkpoint.processes import access, identity
from mom_checkpoint.processes.access import acting_as
from mom_checkpoint.processes.identity import JobUser, tree_problems
from mom_checkpoint.processes.termination import kill_tree, tree_pids
from mom_checkpoint.spool import sessions
from mom_checkpoint.spool.locking import job_lock, lock_dir
from mom_checkpoint.spool.storage import RESTORER_DIR, RUN_NAME, Spool, remove_tree

VAULT_ANSWER_S = 30.0  # how long a restart waits for the vault to list a job's copies
PIDS_FREE_WAIT_S = 10.0  # how long a restore waits for the job's own dead processes to be reaped
WORKDIR_CLEANUP_S = 10.0  # the longest a restart spends removing work folders (its own, or ended ones')
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)
ENDING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # before the restored job runs: it never will
_GENERATION_PATH = re.compile(r"(\d+)\.(.+)/(\d{6,}-\d{8}T\d{6}Z)")
# Files the application wrote to (O_WRONLY or O_RDWR) are handed back; devices are left to CRIU.
_WRITE_MODES = os.O_WRONLY | os.O_RDWR
_OUTPUT_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class TorqueRestart(TorqueJobArgs):
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


def run(call: RestartCall, config: Config, env: Environment, log: Logger) -> int:
    """Restore the job and wait for it; return the application's exit status, or -N when signal N
    ended it (the caller then ends the same way: pbs_mom reports 256+N for a killed job)."""
    try:
        return _restart(call, config, env, log)
    except Error as exc:
        # one fixed phrase per exit status: the message itself may quote a pointer, a path or a
        # checkpointer's log, all the user's text, and qalter -W takes an attribute list
        status = ExitStatus(exc.exit_status)
        reason = f"Failed to restart job: exit {int(status)} ({meaning(status)}; see the node's log)"
        _mark(call, reason, config=config, env=env, log=log)
        raise


def _restart(call: RestartCall, config: Config, env: Environment, log: Logger) -> int:
    deadline = env.monotonic() + config.timeout_s  # the work before the restored job runs is bounded
    caller = _sudo_caller(call, env)
    stated = caller or _stated_owner(call)
    spool = Spool(config.spool_dir)
    backend = backends.create(config, env)
    binary = backend.find_restore_binary()
    generation, record = _resolve(call, spool, config, log, stated, deadline=deadline)
    if record.backend.run_as == "job-user" and config.run_as == "root":
        # its image was written by the job's user (their checkpointer, their digests): root's own
        # restorer never reads it, wherever it lies now (a vault copy is root's files)
        raise Refused(
            f"{generation} was checkpointed in job-user mode and this node restores as root: set "
            f'backends.{config.backend}.run_as = "job-user", or restart the job on a node that does'
        )
    user = _owner(call, stated, record)
    allowed = frozenset({0, user.uid} if config.run_as == "job-user" else {0})
    log = log.bind(
        job_id=record.job.id, generation=record.generation.number, path=str(generation), user=user.name
    )
    try:
        if caller is not None and call.cwd is not None:
            _check_cwd(call.cwd, caller)
        if backend.name == "criu":
            pids = [p.pid for p in record.processes]
            wait_pids_free(pids, min(PIDS_FREE_WAIT_S, max(0.0, deadline - env.monotonic())))
        manifest = check_layout(generation, allowed_uids=allowed, expected_job=call.job_id, deadline=deadline)
        forwarder = _Forwarder(grace_s=config.abort_grace_s)
        restoring = contextlib.ExitStack()  # one restore of a job at a time, until it has been let go
        if os.geteuid() == 0:
            key = JobKey(system_of(manifest.call.convention), user.uid, manifest.job.id)
            restoring.enter_context(
                job_lock(lock_dir(spool.root), key.token, call.argv, manifest.job.id, what="restore")
            )
        with (
            restoring,
            forwarder,
            _workdir(spool, user if config.run_as == "job-user" else None, deadline) as work,
        ):
            staged = backend.stage_image(generation, manifest.files, work.root, user, deadline=deadline)
            pages: InBackground | None = None
            try:
                # What the restorer decides from (every file but the job's memory, and the kept files) is
                # checked before it starts. The memory pages of a restorer that gives the job back
                # stopped are checked while it restores: nothing of the job runs before that check and
                # the identity gate have both passed, and a mismatch kills the stopped tree.
                later = _checked_while_restoring(manifest, staged) if backend.restores_stopped else []
                check_digests(
                    generation, manifest, deadline=deadline, read_from=staged.base,
                    files=[f for f in manifest.files if f not in later],
                )  # fmt: skip
                if later:
                    pages = check_digests_meanwhile(
                        generation, later, read_from=staged.base, deadline=deadline
                    )
                log.info(
                    "restart.start", convention=call.convention, argv=list(call.argv), backend=backend.name
                )
                if os.geteuid() == 0 and caller is None:
                    key = JobKey(system_of(manifest.call.convention), user.uid, manifest.job.id)
                    sessions.record(
                        spool.root, key, os.getpid()
                    )  # the next checkpoint finds the job through us
                own = isinstance(call, SeedRestart)
                with _output_files(manifest, user, generation, work.root, own_streams=own) as inherited:
                    request = RestoreRequest(
                        image=staged,
                        pids=[p.pid for p in manifest.processes],
                        user=user,
                        cwd=call.cwd,
                        workdir=work.restorer,
                        inherited=inherited,
                        timeout_s=max(1.0, deadline - env.monotonic()),
                        root_session_leader=manifest.processes[0].session_id == manifest.processes[0].pid,
                    )
                    try:
                        restored = backend.restore(binary, request)
                    except Error as exc:
                        _keep_restore_log(spool, backend, request, manifest.job.id, exc, log=log)
                        raise
            except BaseException:
                if pages is not None:
                    pages.cancel()  # nothing will be let go: no need to hash on
                raise
            finally:
                staged.close()
            if pages is not None:
                _pages_checked(pages, restored, forwarder, log)
            if forwarder.ending is not None:  # pbs_mom ended the job while it was restored: it never runs
                kill_tree(restored.pid)
                log.info(
                    "restart.ended", restored_pid=restored.pid, signal=forwarder.ending, before_it_ran=True
                )
                return -forwarder.ending
            _admit(restored, user, staged.stopped, log, held_files=config.run_as == "root")
            restoring.close()  # let go: the job's next restore (after it ends) may start
            log.info("restart.running", restored_pid=restored.pid, command=restored.command)
            _mark(call, "Successfully restarted job", config=config, env=env, log=log)
            status = forwarder.wait(restored.pid)
    except Error:
        # whatever failed, the output the job printed before its hold goes back into the files
        # pbs_mom re-created empty (issue 26 #2: TORQUE ends the job and delivers them as they are)
        _rescue_outputs(record, generation, user, own_streams=isinstance(call, SeedRestart), log=log)
        raise
    log.info(
        "restart.ended",
        restored_pid=restored.pid,
        **({"signal": -status} if status < 0 else {"exit_status": status}),
    )
    return status


def _checked_while_restoring(manifest: Manifest, staged: StagedImage) -> list[ImageFile]:
    """The image files whose check can overlap the restore: the job's memory, linked into the staged
    image (root's copies of the small files, which CRIU takes decisions from, are checked first)."""
    return [f for f in manifest.files if f.path.rpartition("/")[2] not in staged.contents]


def _pages_checked(pages: InBackground, restored: Restored, forwarder: _Forwarder, log: Logger) -> None:
    """Wait for the check of the pages; on any failure the restored tree, still stopped, is killed. A
    job ended meanwhile (SIGTERM from pbs_mom) is not waited for: it will never be let go."""
    while not pages.done(timeout=0.1):
        if forwarder.ending is not None:
            pages.cancel()
            return
    try:
        pages.result()
    except BaseException as exc:
        kill_tree(restored.pid)
        log.error("restart.verification_failed", error=str(exc), killed=restored.pid)
        raise
    log.info("restart.verified")


def _keep_restore_log(
    spool: Spool, backend: backends.Backend, request: RestoreRequest, job_id: str, exc: Error, *, log: Logger
) -> None:
    """A failed restore's log outlives the work folder it was written in: root's copy in the spool."""
    text = backend.restore_log(request)
    kept = None
    if text and os.geteuid() == 0:
        try:
            kept = str(spool.keep_log(job_id, "restore", text, request.user.uid))
        except (OSError, Error):
            kept = None
    log.error("restart.restore_failed", error=exc.message, log=kept)


def _admit(
    restored: Restored, user: JobUser, keep_stopped: frozenset[int], log: Logger, *, held_files: bool
) -> None:
    """The identity gate: every thread of the restored tree has exactly the owner's uids, gids and
    groups and no capability, or the whole tree is killed before any of it ran. Only a backend that
    restores stopped (CRIU, --leave-stopped) can be held at the gate; the others' restorers
    (resume, cr_restart) are the restored process themselves, root's until they have restored it:
    their images are root's own in root mode, and in job-user mode they run with the owner's identity
    and no capability, so the kernel bounds what they can give back (docs/SECURITY.md)."""
    if not restored.stopped:
        return
    pids = tree_pids(restored.pid)
    problems = tree_problems(pids, user)
    if held_files and not problems:  # root's CRIU reopened the job's files by their paths
        problems = access.problems(pids, user)
    if problems:
        kill_tree(restored.pid)
        log.error("restart.identity_refused", problems=problems[:20], pids=pids)
        raise Refused(
            f"the restored job would not run as {user.name} alone: {problems[0]}; killed it before any "
            f"of it ran"
        )
    for pid in pids:
        if pid not in keep_stopped:  # a task stopped when it was checkpointed stays stopped
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _stated_owner(call: RestartCall) -> JobUser | None:
    """The owner the batch system names: TORQUE's EUSER (and EGROUP), OpenPBS's %login."""
    if isinstance(call, TorqueRestart) and call.euser is not None:
        return identity.of_name(call.euser, call.egroup)
    return None


def _owner(call: RestartCall, stated: JobUser | None, record: Manifest) -> JobUser:
    """Whose restore this is: the owner the caller states; only for root's own --job/--image, the user
    a root-written manifest names. uid, gid and groups always from the system's user database."""
    recorded_gid: int | None = record.job.gid
    if stated is not None:
        if isinstance(call, TorqueRestart) and call.egroup is not None:
            recorded_gid = None  # TORQUE said which group the job runs in
        user = stated
    else:
        user = identity.of_name(record.job.user)
    if recorded_gid is not None and recorded_gid in user.all_groups:
        user = identity.of_uid(user.uid, recorded_gid)
    if record.job.uid != user.uid:
        if isinstance(call, SeedRestart) and call.own:
            raise _no_checkpoint(call, None)
        what = call.job_id or (call.image if isinstance(call, SeedRestart) else None)
        raise Refused(
            f"{what}: the checkpoint is of uid {record.job.uid} ({record.job.user}), not of {user.name} "
            f"({user.uid}): refusing"
        )
    return user


def _resolve(
    call: RestartCall, spool: Spool, config: Config, log: Logger, owner: JobUser | None, *, deadline: float
) -> tuple[Path, Manifest]:
    """The generation to restore and its manifest (root's record of it, read before anything is
    hashed). With an owner known, only that owner's generations of the job are candidates. With a
    vault, a newer generation there (or the only one: this node never ran the job, or lost its
    spool) is first copied into the local spool, checked as it is copied, and restored from there."""
    if isinstance(call, SeedRestart) and call.image is not None:
        path = _spool_generation(spool, call.image) if call.own else Path(call.image)
        if path is None or not path.is_dir():
            raise _no_checkpoint(call, spool)
        record = _record_of(path, call)
        return path, record
    job_id = call.job_id
    assert job_id is not None
    own = isinstance(call, SeedRestart) and call.own
    # the batch system that calls knows only its own jobs: the same id from the other is another job
    system = system_of(call.convention) if isinstance(call, TorqueRestart) else None
    fetch = _VaultFetch(config, spool, log, job_id, owner, system, deadline)
    local = max((g.number for g in spool.job_generations(job_id)), default=0)
    if isinstance(call, TorqueRestart) and call.checkpoint_dir and call.checkpoint_name:
        pointed = _follow_pointer(call, spool, config, log)
        if isinstance(pointed, Path):
            return pointed, read_trusted_manifest(pointed)
        if pointed is not None and int(pointed.split("-", 1)[0]) > local and config.vault_dir:
            # the checkpoint the batch system took last was made on another node
            if (fetched := fetch.newest(name=pointed)) is not None:
                return fetched
            raise NotYetInVault(pointed, job_id)
    if (fetched := fetch.newest(newer_than=local)) is not None:
        return fetched
    for generation in reversed(spool.job_generations(job_id)):
        try:
            record = read_trusted_manifest(generation.path)
        except Error as exc:
            if not own:
                raise  # the newest generation is unusable: say why, never fall back to older state
            log.warning("restart.generation_skipped", path=str(generation.path), error=exc.message)
            continue  # for a sudo caller, a generation root cannot vouch for is not theirs
        if (owner is not None and record.job.uid != owner.uid) or (
            system is not None and system_of(record.call.convention) != system
        ):
            log.info("restart.another_job", path=str(generation.path), owner=record.job.uid,
                     convention=record.call.convention)  # fmt: skip
            continue
        log.info("restart.newest", job_id=job_id, path=str(generation.path))
        return generation.path, record
    raise _no_checkpoint(call, spool)


@dataclass(frozen=True)
class _VaultFetch:
    """The job's generations in the vault, for this caller: the same owner and batch system filters
    as in the spool, and root's manifest read again once the copy is local."""

    config: Config
    spool: Spool
    log: Logger
    job_id: str
    owner: JobUser | None
    system: str | None
    deadline: float

    def newest(self, *, newer_than: int = 0, name: str | None = None) -> tuple[Path, Manifest] | None:
        if not self.config.vault_dir:
            return None
        from mom_checkpoint.vault.store import Vault, VaultGeneration, bounded, order

        vault = Vault(self.config.vault_dir)

        def listing() -> list[list[object]]:
            vault.check_root(self.spool.root)
            found = [
                [str(g.path), g.number, g.created, g.key]
                for token in self._tokens(vault)
                for g in vault.generations(token)
                if g.number > newer_than and (name is None or g.name == name)
            ]
            return found

        try:  # a vault that cannot say there is something newer (gone, hung): the spool's is taken
            listed = bounded(
                listing, min(VAULT_ANSWER_S, max(1.0, self.deadline - time.monotonic())), "restart"
            )
        except Error as exc:
            self.log.warning("restart.vault_unavailable", error=exc.message)
            return None
        candidates = [VaultGeneration(Path(p), int(n), str(c), str(k)) for p, n, c, k in listed]
        if not candidates:
            return None
        newest = max(candidates, key=order)  # one number made on two nodes: the later
        fetched = bounded(
            lambda: str(vault.fetch(newest, self.spool, deadline=self.deadline)),
            max(1.0, self.deadline - time.monotonic()),
            f"copying {newest.path} into the spool",
        )
        path = Path(fetched)
        record = read_trusted_manifest(path)
        if record.job.id != self.job_id or not self._mine(record.key.token):
            raise Refused(f"{newest.path} holds another job's checkpoint: refusing it")
        self.log.info("restart.fetched", source=str(newest.path), path=str(path), bytes=record.total_bytes)
        return path, record

    def _tokens(self, vault: Any) -> list[str]:
        """The job's folders in the vault: named outright when the owner is known, else found."""
        if self.owner is not None:
            systems = [self.system] if self.system is not None else sorted(set(SYSTEMS.values()))
            return [JobKey(system, self.owner.uid, self.job_id).token for system in systems]
        return [token for token in vault.job_keys(self.job_id) if self._mine(token)]

    def _mine(self, token: str) -> bool:
        key = JobKey.from_token(token)
        return (
            key is not None
            and (self.owner is None or key.uid == self.owner.uid)
            and self.system in (None, key.system)
        )


def _record_of(path: Path, call: SeedRestart) -> Manifest:
    if not call.own:
        return read_trusted_manifest(path)
    try:
        return read_trusted_manifest(path)
    except Error:
        raise _no_checkpoint(call, None) from None


def _no_checkpoint(call: RestartCall, spool: Spool | None) -> NoCheckpoint:
    """One answer for a job or folder that does not exist and for one that is another user's."""
    if isinstance(call, SeedRestart) and call.image is not None:
        return NoCheckpoint(f"{call.image} is not a complete generation folder of yours in the spool")
    where = f" in {spool.root}" if spool is not None else ""
    return NoCheckpoint(f"job {call.job_id} has no complete checkpoint{where}")


def _spool_generation(spool: Spool, image: str) -> Path | None:
    """--own --image: only a generation folder of the spool, recognised by its name alone: nothing
    outside the spool is walked, stat'ed or named for a sudo caller."""
    root = os.path.normpath(spool.root)
    clean = os.path.normpath(image)
    if clean != image.rstrip("/") or not clean.startswith(root + "/"):
        return None
    parts = clean[len(root) + 1 :].split("/")
    if len(parts) != 2 or not RUN_NAME.fullmatch(parts[0]) or not GENERATION_NAME.fullmatch(parts[1]):
        return None
    return Path(root, *parts)


def _follow_pointer(call: TorqueRestart, spool: Spool, config: Config, log: Logger) -> Path | str | None:
    """The generation named at CHECKPOINT_DIR/CHECKPOINT_NAME, if that is usable; its name alone
    when it is not in this node's spool (the vault may have it); None to fall back.

    A CHECKPOINT_DIR outside the allowed roots is refused outright; a missing or unusable pointer
    (pbs_mom deletes the folder after a failed checkpoint) falls back to the newest generation.
    """
    assert call.checkpoint_dir is not None and call.checkpoint_name is not None
    try:
        reader = identity.of_name(call.euser).uid if call.euser is not None else None
        dir_fd = open_checkpoint_dir(
            call.checkpoint_dir, *config.checkpoint_roots(call.convention), reader=reader
        )
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
        # the pointer's text is the user's: the log has it (JSON-escaped), the one line does not
        log.warning("restart.pointer_foreign", named=pointer.generation[:512], job_named=pointer.job_id[:128])
        raise Refused(
            f"the pointer {call.checkpoint_name} names no checkpoint of job {call.job_id} in {spool.root}"
        )
    if not target.is_dir():
        log.warning("restart.pointer_stale", path=str(target))
        return match.group(3)
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
    return identity.of_uid(uid)


def _check_cwd(cwd: str, user: JobUser) -> None:
    """--own: the working directory must be one the calling user may enter."""
    try:
        with acting_as(user):
            os.close(os.open(cwd, os.O_RDONLY | os.O_DIRECTORY))
    except OSError as exc:
        raise Refused(f"--cwd {cwd}: {exc.strerror} for {user.name}") from None


def wait_pids_free(pids: list[int], wait_s: float, sleep: Callable[[float], object] = time.sleep) -> None:
    """CRIU restores the original PIDs: they must all be free. A PID a zombie holds (the job's own
    application, killed by the qhold a moment ago and not yet reaped: TORQUE's qrls right after a
    qhold restarts within a second) is waited for, at most ``wait_s`` in all; one a live process
    holds, or a zombie still there after that, is named (PidInUse, 82)."""
    deadline = time.monotonic() + wait_s
    for pid in pids:
        while True:
            try:
                proc = psutil.Process(pid)
                zombie = proc.status() == psutil.STATUS_ZOMBIE
                state = ", a zombie not yet reaped" if zombie else ""
                holder = f"{pid} (now {proc.name()}{state}, user {proc.username()})"
            except psutil.NoSuchProcess:
                break
            except psutil.Error:
                zombie, holder = False, str(pid)
            if not zombie or time.monotonic() >= deadline:
                raise PidInUse(holder)
            sleep(0.05)


@dataclass(frozen=True)
class _Work:
    root: Path  # root's own folder (0711): the staged image lives in its 0700 "pinned" subfolder
    restorer: Path  # where the restorer writes its log: the job user's when it runs as them


@contextlib.contextmanager
def _workdir(spool: Spool, user: JobUser | None, deadline: float) -> Iterator[_Work]:
    """Where the restorer writes its log (and CRIU its stats): under the spool when root (a restart
    killed with -9 leaves it there for the next one to clean), a private temporary folder otherwise.
    Root's 0700 folder, with the restorer's own subfolder the job user's when the restorer runs as
    them, which their restorer is handed as a descriptor: no process of the user reaches any of it
    by path, so nobody can fill it for the next restart to clear, or add to the restorer's log. Even
    so, nothing in it is ever authority for root (no pid file is read; logs are read through safefs),
    and every removal has a deadline."""
    if os.geteuid() == 0:  # ended restarts' leftovers: removed within WORKDIR_CLEANUP_S at most
        path = spool.restart_workdir(deadline=min(deadline, time.monotonic() + WORKDIR_CLEANUP_S))
    else:  # a user's own restart (tests, or an unprivileged mode): not pbs_mom's, which runs as root
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="mom-restart-"))
    try:
        restorer = path / RESTORER_DIR
        restorer.mkdir(mode=0o700)
        if user is not None and os.geteuid() == 0:
            os.chown(restorer, user.uid, user.gid)
        yield _Work(path, restorer)
    finally:
        remove_tree(path, deadline=time.monotonic() + WORKDIR_CLEANUP_S)


@contextlib.contextmanager
def _output_files(
    manifest: Manifest, user: JobUser, generation: Path, work: Path, *, own_streams: bool
) -> Iterator[list[InheritedFile]]:
    """The descriptors handed to the restored job with --inherit-fd, in place of paths CRIU would open.

    - The files the application was writing, in append mode and with the owner's rights: pbs_mom
      re-creates the job's .OU/.ER files before a restart (empty: what a SIGNAL 15 checkpoint kept of
      them is put back first), and a job checkpointed with --leave-running wrote on after the
      checkpoint, so CRIU would refuse the changed sizes. With ``own_streams`` (the seed's flow: a
      new job resumes an old one) where its stdout and stderr went is this program's own stdout and
      stderr instead: the new job's output, and nothing is created for the old job.
    - The files it was reading that were kept with the generation (its job script, which pbs_mom
      deletes when a job ends): a copy of root's copy, the owner's and already unlinked (so the job's
      own checkpointer can dump it again, as a deleted file), at the offset the job was at.
    """
    written = sorted(
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
    streams = _streams(manifest) if own_streams else {}
    outputs = {k.path: k for k in manifest.kept if k.role == "output"}
    opened: list[InheritedFile] = []
    try:
        for kept in manifest.kept:
            if kept.role == "held" and kept.external:  # dumped as external: given back under that name
                opened.append(InheritedFile(_held_copy(generation, kept, work, user), kept.external))
            elif kept.role == "held" and kept.path not in written:  # schema 2: dumped by its path
                opened.append(InheritedFile(_held_copy(generation, kept, work, user), kept.path))
        for path in written:
            if path in streams:
                opened.append(InheritedFile(os.dup(streams[path]), path))
                continue
            with acting_as(user):
                fd = os.open(path, _OUTPUT_FLAGS, 0o600)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)  # a FIFO or device at the path now: CRIU deals with it (or refuses)
                continue
            os.set_blocking(fd, True)
            opened.append(InheritedFile(fd, path))
            if path in outputs and os.fstat(fd).st_size == 0:  # re-created empty by pbs_mom
                _put_back(generation, outputs[path], fd)
        yield opened
    except PermissionError as exc:
        raise Refused(f"cannot open {exc.filename} as {user.name}: {exc.strerror}") from None
    finally:
        for inherited in opened:
            os.close(inherited.fd)


def _rescue_outputs(
    manifest: Manifest, generation: Path, user: JobUser, *, own_streams: bool, log: Logger
) -> None:
    """A restart that failed puts back what the job printed before its SIGNAL 15 checkpoint into
    its output files, where pbs_mom re-created them empty (never into a file that has anything in
    it, nor for the seed's flow, whose output is the new job's). Best effort: each file on its own,
    opened with the owner's rights, and nothing of it changes the restart's own failure."""
    if own_streams:
        return
    for kept in manifest.kept:
        if kept.role != "output":
            continue
        try:
            with acting_as(user):
                fd = os.open(kept.path, _OUTPUT_FLAGS, 0o600)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode) and os.fstat(fd).st_size == 0:
                    os.set_blocking(fd, True)
                    _put_back(generation, kept, fd)
                    log.info("restart.output_put_back", path=kept.path, bytes=kept.size)
            finally:
                os.close(fd)
        except (OSError, Error) as exc:
            log.warning("restart.output_not_put_back", path=kept.path, error=str(exc))


def _streams(manifest: Manifest) -> dict[str, int]:
    """Where the application's stdout and stderr went -> this program's 1 and 2."""
    found: dict[str, int] = {}
    for process in manifest.processes:
        for fd in process.fds:
            if fd.fd in (1, 2) and fd.kind == "file":
                found.setdefault(fd.target, fd.fd)
    return found


def _kept_copy(generation: Path, kept: KeptFile) -> int:
    """Root's copy of a file the job held, open read-only at the job's offset."""
    folder = safefs.open_dir(generation)
    try:
        fd, _st = safefs.open_regular(kept.copy, dir_fd=folder)
    finally:
        os.close(folder)
    os.lseek(fd, kept.pos, os.SEEK_SET)
    return fd


def _held_copy(generation: Path, kept: KeptFile, work: Path, user: JobUser) -> int:
    """A file the job reads, given back: the owner's copy of root's copy, without a name from the
    start, open read-only at the job's offset.

    It is the owner's (CRIU checks its mode against the image's, and their next dump reads it back
    through /proc), so they may make it writable and grow it: it is made in the node's shared
    memory (``/dev/shm``, ``O_TMPFILE``), where what they write is their own memory, never on the
    spool's file system, where it would take space nobody counts (review of issue 25 #2). Where the
    node has no such file system, it goes to the restart's work folder as before."""
    source = _kept_copy(generation, kept)
    copy = _unnamed_file(work)
    try:
        if os.geteuid() == 0:
            os.fchown(copy, user.uid, user.gid)
        if kept.mode:  # CRIU checks an external file's mode against the image's
            os.fchmod(copy, kept.mode & 0o777)
        os.lseek(source, 0, os.SEEK_SET)
        copy_all(source, copy)
        reading = os.open(f"/proc/self/fd/{copy}", os.O_RDONLY | os.O_CLOEXEC)  # a read-only description
    finally:
        os.close(copy)
        os.close(source)
    os.lseek(reading, kept.pos, os.SEEK_SET)
    return reading


# where a held file's copy is made (tmpfs: what its writer adds is their memory); O_TMPFILE gives it
# no name at any moment, so the shared folder's other users never see it
HELD_COPIES = "/dev/shm"  # noqa: S108


def _unnamed_file(work: Path) -> int:
    """A new file of root's, 0400, with no name (in HELD_COPIES when it is a tmpfs, else in ``work``)."""
    try:
        if os.path.ismount(HELD_COPIES):
            return os.open(HELD_COPIES, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o400)
    except OSError:
        pass
    path = work / f"held-{os.urandom(8).hex()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
    os.unlink(path)
    return fd


def _put_back(generation: Path, kept: KeptFile, fd: int) -> None:
    """What the job had printed before its SIGNAL 15 checkpoint, into its re-created output file."""
    source = _kept_copy(generation, kept)
    try:
        os.lseek(source, 0, os.SEEK_SET)
        copy_all(source, fd)
    finally:
        os.close(source)


class _Forwarder:
    """Pass the signals pbs_mom (or a user) sends to this process on to the restored application.

    A signal that ends the job (SIGTERM, SIGINT, SIGHUP: qdel) goes to every process of the restored
    tree, and whatever of it is still there ``grace_s`` later is killed (SIGKILL), the whole tree:
    pbs_mom's own SIGKILL does not reach it (it skips root's processes, this one among them, and
    the restored processes may sit in their own old session), so a task that ignores SIGTERM would
    otherwise outlive qdel (issue 26 #3)."""

    def __init__(self, grace_s: float = 10.0) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        self.saved: dict[int, Any] = {}
        self.ending: int | None = None  # a signal that ends the job, received before it ran
        self.grace_s = grace_s
        self.doomed: list[psutil.Process] = []  # the tree when an ending signal came, to kill after grace

    def __enter__(self) -> _Forwarder:
        for sig in FORWARDED:
            self.saved[sig] = signal.signal(sig, self._handle)
        self.saved[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._grace_over)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.pid is None:
            self.pending.append(signum)
            if signum in ENDING and self.ending is None:
                self.ending = signum
            return
        if signum in ENDING:
            self._end(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def _end(self, signum: int) -> None:
        """The signal to every process of the tree; SIGKILL to what is left of it after grace_s."""
        assert self.pid is not None
        members = []
        for pid in tree_pids(self.pid):
            with contextlib.suppress(psutil.Error):
                members.append(psutil.Process(pid))  # its identity (start time) kept with it
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.send_signal(signum)
        if not self.doomed:
            self.doomed = members
            signal.setitimer(signal.ITIMER_REAL, max(0.001, self.grace_s))
        else:
            self.doomed += [m for m in members if m.pid not in {d.pid for d in self.doomed}]

    def _grace_over(self, _signum: int, _frame: FrameType | None) -> None:
        for member in reversed(self.doomed):  # the deepest first: nothing left to go on
            with contextlib.suppress(psutil.Error):
                member.kill()  # only the very process seen then, never a pid reused since

    def wait(self, pid: int) -> int:
        self.pid = pid
        for signum in self.pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        _, status = os.waitpid(pid, 0)
        if self.doomed:  # ended by qdel: what of the tree outlived its root goes too, after the grace
            alive = [m for m in self.doomed if m.pid != pid]
            with contextlib.suppress(psutil.Error):
                _, alive = psutil.wait_procs(alive, timeout=max(0.0, signal.getitimer(signal.ITIMER_REAL)[0]))
            signal.setitimer(signal.ITIMER_REAL, 0)
            for member in reversed(alive):
                with contextlib.suppress(psutil.Error):
                    member.kill()
        return os.waitstatus_to_exitcode(status)  # -N when signal N ended it


def _mark(call: RestartCall, status: str, *, config: Config, env: Environment, log: Logger) -> None:
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

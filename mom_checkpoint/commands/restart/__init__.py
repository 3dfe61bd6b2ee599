"""Restart: bring a job back from its newest complete, verified generation, and stay its task.

    resolve   which generation (the pointer, the spool, the vault) and whose: the owner from passwd
    verify    this node's CPU, the image's layout and digests (the job's memory: while it is restored)
    stage     a copy of the image the restorer may read, in this restart's own work folder
    restore   the restorer, handed the job's output and held files as descriptors
    gate      every restored task has its owner's identity alone, or the tree is killed unrun
    run       let it go, pass on pbs_mom's signals, and end with the application's status

pbs_mom runs the restart program as fork + setsid + execv and from then on treats it as the job: the
job ends when it exits, and qdel signals its session. So the restored application runs as this
process's child in this session (CRIU: --restore-detached --restore-sibling), signals are forwarded
to it, and the application's exit status becomes this process's. Each step's time goes into the
``restart.running`` log event (``steps``).
"""

from __future__ import annotations

import contextlib
import os

import msgspec

from mom_checkpoint import backends
from mom_checkpoint.backends.base import Restored, RestoreRequest
from mom_checkpoint.commands.restart.calls import PbsRestart, RestartCall, SeedRestart, TorqueRestart
from mom_checkpoint.commands.restart.gate import admit, checked_while_restoring, pages_checked
from mom_checkpoint.commands.restart.marks import mark
from mom_checkpoint.commands.restart.outputs import output_files, rescue_outputs
from mom_checkpoint.commands.restart.resolve import check_cwd, owner_of, resolve, stated_owner, sudo_caller
from mom_checkpoint.commands.restart.signals import Forwarder
from mom_checkpoint.commands.restart.workdir import Work, workdir
from mom_checkpoint.image.manifest import Manifest
from mom_checkpoint.image.staging import StagedImage
from mom_checkpoint.image.verification import InBackground, TrustedGeneration, VerifiedGeneration
from mom_checkpoint.platform import cpu
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import Error, Refused
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.platform.status import ExitStatus, meaning
from mom_checkpoint.platform.steps import Steps
from mom_checkpoint.processes import namespaces
from mom_checkpoint.processes.identity import JobUser
from mom_checkpoint.processes.termination import kill_tree, wait_pids_free
from mom_checkpoint.spool import sessions
from mom_checkpoint.spool.locking import checkpoint_finished, job_lock, lock_dir
from mom_checkpoint.spool.storage import Spool

__all__ = ["PbsRestart", "RestartCall", "SeedRestart", "TorqueRestart", "run"]

PIDS_FREE_WAIT_S = 10.0  # how long a restore waits for the job's own dead processes to be reaped


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
        mark(call, reason, config=config, env=env, log=log)
        raise


class _Found(msgspec.Struct, frozen=True):
    """What the resolve step established: the generation (root's manifest of it), whose it is, who
    asked (a sudo caller), and the restorer that brings it back."""

    generation: TrustedGeneration
    user: JobUser
    caller: JobUser | None
    backend: backends.Backend
    binary: str


def _restart(call: RestartCall, config: Config, env: Environment, log: Logger) -> int:
    steps = Steps(env.monotonic)
    deadline = env.monotonic() + config.timeout_s  # the work before the restored job runs is bounded
    spool = Spool(config.spool_dir)
    with steps("resolve"):
        found = _resolve(call, spool, config, env, log, deadline=deadline)
    manifest = found.generation.manifest
    log = log.bind(job_id=manifest.job.id, generation=manifest.generation.number,
                   path=str(found.generation.path), user=found.user.name)  # fmt: skip
    try:
        with steps("verify"):
            generation = _verify(call, found, config, env, deadline)
        forwarder = Forwarder(grace_s=config.abort_grace_s)
        unrun = contextlib.ExitStack()  # a failure before the job is let go: none of it runs
        restorer_user = found.user if config.run_as == "job-user" else None
        with (
            _restoring(call, spool, manifest) as restoring,
            unrun,
            forwarder,
            workdir(spool, restorer_user, deadline) as work,
        ):
            restored, pages, stopped = _stage_and_restore(
                call, found, generation, spool, work, unrun=unrun, config=config, env=env, log=log,
                steps=steps, deadline=deadline,
            )  # fmt: skip
            with steps("gate"):
                if pages is not None:
                    pages_checked(pages, restored, forwarder, log)
                if forwarder.ending is not None:
                    return _ended_before_it_ran(restored, forwarder.ending, log)
                admit(restored, found.user, stopped, log, held_files=config.run_as == "root")
            unrun.pop_all()  # let go: its namespace lives as long as it does
            restoring.close()  # the job's next restore (after it ends) may start
            log.info(
                "restart.running", restored_pid=restored.pid, command=restored.command, steps=steps.seconds
            )
            mark(call, "Successfully restarted job", config=config, env=env, log=log)
            try:
                status = forwarder.wait(restored.pid)
            finally:
                _end_namespace(restored, spool, manifest, config, log)
    except Error:
        # whatever failed, the output the job printed before its hold goes back into the files
        # pbs_mom re-created empty (issue 26 #2: TORQUE ends the job and delivers them as they are)
        rescue_outputs(manifest, found.generation.path, found.user,
                       own_streams=isinstance(call, SeedRestart), log=log)  # fmt: skip
        raise
    log.info(
        "restart.ended",
        restored_pid=restored.pid,
        **({"signal": -status} if status < 0 else {"exit_status": status}),
    )
    return status


def _resolve(
    call: RestartCall, spool: Spool, config: Config, env: Environment, log: Logger, *, deadline: float
) -> _Found:
    """Which generation, whose, for whom, and with which restorer: nothing of the image is read yet."""
    caller = sudo_caller(call, env)
    stated = caller or stated_owner(call)
    backend = backends.create(config, env)
    binary = backend.find_restore_binary()
    generation = resolve(call, spool, config, log, stated, deadline=deadline)
    _refuse_a_job_users_image_as_root(generation, config)
    user = owner_of(call, stated, generation.manifest)
    return _Found(generation, user, caller, backend, binary)


def _verify(
    call: RestartCall, found: _Found, config: Config, env: Environment, deadline: float
) -> VerifiedGeneration:
    """Before anything is staged: a sudo caller's working folder is theirs, this node's CPU has what
    the checkpointed one had, the generation's layout matches root's manifest, and (without a
    namespace of its own) the job's PIDs are free."""
    if found.caller is not None and call.cwd is not None:
        check_cwd(call.cwd, found.caller)
    host = found.generation.manifest.host
    cpu.check(host.cpu, checkpointed_on=host.name)
    if found.backend.name == "criu" and not config.backends.criu.pid_namespace:  # else: its own PIDs
        pids = [p.pid for p in found.generation.manifest.processes]
        wait_pids_free(pids, min(PIDS_FREE_WAIT_S, max(0.0, deadline - env.monotonic())))
    return found.generation.verified(expected_job=call.job_id, deadline=deadline)


def _restoring(call: RestartCall, spool: Spool, manifest: Manifest) -> contextlib.ExitStack:
    """One restore of a job at a time, until it has been let go (root's lock of the job)."""
    restoring = contextlib.ExitStack()
    if os.geteuid() == 0:
        restoring.enter_context(
            job_lock(lock_dir(spool.root), manifest.key.token, call.argv, manifest.job.id, what="restore")
        )
    return restoring


def _stage_and_restore(
    call: RestartCall,
    found: _Found,
    generation: VerifiedGeneration,
    spool: Spool,
    work: Work,
    *,
    unrun: contextlib.ExitStack,
    config: Config,
    env: Environment,
    log: Logger,
    steps: Steps,
    deadline: float,
) -> tuple[Restored, InBackground | None, frozenset[int]]:
    """Stage the image, check what the restorer decides from, and restore the job (stopped, where the
    restorer can): the restored job, the check of its memory still running, and which of its
    processes stay stopped when it is let go."""
    manifest, backend = generation.manifest, found.backend
    with steps("stage"):
        staged = backend.stage_image(
            generation.path, manifest.files, work.root, found.user, deadline=deadline
        )
    pages: InBackground | None = None
    try:
        with steps("verify"):
            # What the restorer decides from (every file but the job's memory, and the kept files) is
            # checked before it starts. The memory pages of a restorer that gives the job back stopped
            # are checked while it restores: nothing of the job runs before that check and the
            # identity gate have both passed, and a mismatch kills the stopped tree.
            later = checked_while_restoring(manifest, staged) if backend.restores_stopped else []
            generation.check_digests(
                deadline=deadline, read_from=staged.base, files=[f for f in manifest.files if f not in later]
            )
            if later:
                pages = generation.check_digests_meanwhile(later, read_from=staged.base, deadline=deadline)
        log.info("restart.start", convention=call.convention, argv=list(call.argv), backend=backend.name)
        if os.geteuid() == 0 and found.caller is None:  # the next checkpoint finds the job through us
            sessions.record(spool.root, manifest.key, os.getpid())
        with steps("restore"):
            restored = _restore(call, backend, found.binary, staged, generation, user=found.user, spool=spool,
                                work=work, env=env, deadline=deadline, log=log,
                                namespace=config.backends.criu.pid_namespace)  # fmt: skip
        unrun.callback(restored.end_namespace)
        _record_namespace(restored, spool, manifest, found.user, found.caller, log=log)
    except BaseException:
        if pages is not None:
            pages.cancel()  # nothing will be let go: no need to hash on
        raise
    finally:
        staged.close()
    return restored, pages, staged.stopped


def _ended_before_it_ran(restored: Restored, signum: int, log: Logger) -> int:
    """pbs_mom ended the job while it was restored: it never runs."""
    kill_tree(restored.pid)
    log.info("restart.ended", restored_pid=restored.pid, signal=signum, before_it_ran=True)
    return -signum


def _refuse_a_job_users_image_as_root(generation: TrustedGeneration, config: Config) -> None:
    """An image written by the job's user (their checkpointer, their digests) is never read by root's
    own restorer, wherever it lies now (a vault copy is root's files)."""
    if generation.manifest.backend.run_as == "job-user" and config.run_as == "root":
        raise Refused(
            f"{generation.path} was checkpointed in job-user mode and this node restores as root: set "
            f'backends.{config.backend}.run_as = "job-user", or restart the job on a node that does'
        )


def _end_namespace(restored: Restored, spool: Spool, manifest: Manifest, config: Config, log: Logger) -> None:
    """The job has ended: so does its namespace, and whatever the application left running in it. A
    checkpoint of the job that ended it (SIGNAL 15: CRIU kills the tree it dumped) runs its CRIU in
    that namespace, which would take it along: it finishes first (the job's lock, at most timeout_s)."""
    if restored.holder is None:
        return
    if os.geteuid() == 0 and not checkpoint_finished(
        lock_dir(spool.root), manifest.key.token, config.timeout_s
    ):
        log.warning("restart.checkpoint_still_running", timeout_s=config.timeout_s)
    restored.end_namespace()


def _record_namespace(
    restored: Restored,
    spool: Spool,
    manifest: Manifest,
    user: JobUser,
    caller: JobUser | None,
    *,
    log: Logger,
) -> None:
    """Say in the log where the restored job lives, and record its namespaces with the restart for the
    hook, which enters no namespace but those (before any of the job runs: still root's word)."""
    if restored.holder is None:
        return
    made = namespaces.of(restored.pid)
    log.info("restart.namespace", holder=restored.holder.pid, pid_ns=made.pid, mnt_ns=made.mnt)
    if os.geteuid() == 0 and caller is None:
        sessions.record(spool.root, manifest.key, os.getpid(), namespaces=made)


def _restore(
    call: RestartCall,
    backend: backends.Backend,
    binary: str,
    staged: StagedImage,
    generation: VerifiedGeneration,
    *,
    user: JobUser,
    spool: Spool,
    work: Work,
    env: Environment,
    deadline: float,
    log: Logger,
    namespace: bool,
) -> Restored:
    """The restorer's run, into namespaces of the job's own where it can, the job's files handed to it
    as descriptors (opened there); a failed restore's log kept."""
    own, manifest = isinstance(call, SeedRestart), generation.manifest
    holder = _holder(backend, log) if namespace else None
    opener = holder.open if holder is not None else os.open
    try:
        with output_files(
            manifest, user, generation.path, work.root, own_streams=own, opener=opener
        ) as inherited:
            request = RestoreRequest(
                image=staged,
                pids=[p.pid for p in manifest.processes],
                user=user,
                cwd=call.cwd,
                workdir=work.restorer,
                inherited=inherited,
                timeout_s=max(1.0, deadline - env.monotonic()),
                root_session_leader=manifest.processes[0].session_id == manifest.processes[0].pid,
                holder=holder,
            )
            try:
                return backend.restore(binary, request)
            except Error as exc:
                _keep_restore_log(spool, backend, request, manifest.job.id, exc, log=log)
                raise
    except BaseException:
        if holder is not None:
            holder.close()
        raise


def _holder(backend: backends.Backend, log: Logger) -> namespaces.Holder | None:
    """The fresh namespaces a CRIU restore puts the job into, or none (said in the log) where this
    node cannot make them (doctor says so too)."""
    if backend.name != "criu":
        return None
    try:
        namespaces.nsenter()
        return namespaces.Holder()
    except (OSError, Error) as exc:
        log.warning("restart.no_namespace", reason=str(exc))
        return None


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

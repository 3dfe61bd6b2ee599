"""The hook: checkpoint one job into a new generation, as pbs_mom asks.

    preflight   find the job's processes; check its identity, CHECKPOINT_DIR, the checkpointer, space
    lock        the job's lock, what its earlier calls left removed, a node slot, the user's quota
    dump        into .incoming-* (attempt.py), the job frozen only meanwhile
    seal        hash + fsync the image and the kept files (the job runs again), write the manifest
    publish     one rename: from then on the generation is complete
    pointer     at CHECKPOINT_DIR/CHECKPOINT_NAME, naming it
    prune       the job's generations beyond keep (retired at once, removed after the call)
    end         SIGNAL 15 only, and only after all of that: end the job

Every check that can refuse the call runs before anything is written. Each step's time goes into the
``checkpoint.done`` log event (``steps``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from mom_checkpoint import backends
from mom_checkpoint.backends import JobUser
from mom_checkpoint.batch.calls import CheckpointCall
from mom_checkpoint.batch.jobkey import JobKey, system_of
from mom_checkpoint.batch.pointer import Pointer, open_checkpoint_dir, remove_pointer, write_pointer
from mom_checkpoint.commands.checkpoint.attempt import Attempt
from mom_checkpoint.image.layout import Generation
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import DiskFull, Error, NotCheckpointable, Refused
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.platform.steps import Steps
from mom_checkpoint.processes import discovery, identity
from mom_checkpoint.processes.termination import end_session
from mom_checkpoint.spool import sessions
from mom_checkpoint.spool.locking import job_lock, lock_dir, node_slot
from mom_checkpoint.spool.storage import Owner, Spool, check_space

if TYPE_CHECKING:
    from mom_checkpoint.image.manifest import Manifest
    from mom_checkpoint.spool.usage import Quota


class Outcome(msgspec.Struct, frozen=True):
    generation: Generation
    manifest: Manifest
    pruned: list[Path]
    ended: list[int]


def run(call: CheckpointCall, config: Config, env: Environment, log: Logger) -> Outcome:
    """Checkpoint the job the call names; the attempt is counted in the metrics file, if configured."""
    started = env.monotonic()
    try:
        outcome = _checkpoint(call, config, env, log)
    except Error as exc:
        reason = exc.exit_status.name.lower()
        _count(config, env, log, ok=False, reason=reason, duration_s=env.monotonic() - started)
        raise
    manifest = outcome.manifest
    _count(config, env, log, ok=True, reason="ok", duration_s=env.monotonic() - started,
           frozen_s=manifest.times.frozen_s, size=manifest.total_bytes)  # fmt: skip
    return outcome


class _Job(msgspec.Struct, frozen=True):
    """What preflight established: the job's processes, its key, owner and group, and the log bound
    to them."""

    processes: discovery.JobProcesses
    key: JobKey
    owner: JobUser
    group: str
    log: Logger


def _checkpoint(call: CheckpointCall, config: Config, env: Environment, log: Logger) -> Outcome:
    steps = Steps(env.monotonic)
    started_wall, started = env.clock(), env.monotonic()
    deadline = started + config.timeout_s  # the whole call: waiting, the dump, reading and hashing it
    spool = Spool(config.spool_dir)
    with steps("preflight"):
        job = _find(call, config, spool, log.bind(job_id=call.job_id, convention=call.convention,
                                                  argv=list(call.argv)))  # fmt: skip
        log = job.log
        pointer_fd = _open_checkpoint_dir(call, config, job)
    try:
        with steps("preflight"):
            # a checkpointer kept stopped (its user can SIGSTOP it in job-user mode) is killed and
            # fails the call (80), rather than hold a node slot until timeout_s
            from mom_checkpoint.platform.environment import stopped_checkpointer_fails

            backend = backends.create(config, stopped_checkpointer_fails(env))
            binary = backend.find_binary()
            _check_space(spool, job, config, call.job_id, deadline)
            keep = _keep(call, config, log)
            spool.ensure_root()
        locked = _locked(spool, job, call, config=config, env=env, deadline=deadline, keep=keep, steps=steps)
        with locked as (run_dir, number, quota):
            log = log.bind(generation=number)
            attempt = Attempt(call, config, env, log, steps, job.processes, job.owner, job.group, backend,
                              binary, started_wall, started, deadline, quota)  # fmt: skip
            storage_owner = _storage_owner(config, job)
            try:
                generation, manifest = attempt.run(spool.begin(run_dir, storage_owner, job.key.token), number)
            except BaseException:
                spool.remove_if_empty(run_dir)  # a first checkpoint that failed leaves no trace
                raise
            with steps("pointer"):
                _write_pointer(call, pointer_fd, generation, job, env)
            with steps("prune"):
                pruned, retired = _prune(spool, job, keep, run_dir, call=call, pointer_fd=pointer_fd, log=log)
    finally:
        if pointer_fd is not None:
            os.close(pointer_fd)
    with steps("end"):
        ended = _end(call, job, config, env, log)
    log.info(
        "checkpoint.done",
        path=str(generation.path),
        bytes=manifest.total_bytes,
        dump_s=manifest.times.dump_s,
        frozen_s=manifest.times.frozen_s,
        post_dump_s=manifest.times.post_dump_s,
        total_s=env.monotonic() - started,
        pruned=[str(p) for p in pruned],
        steps=steps.seconds,
    )
    _after_the_call(retired, spool, config, env, log=log, job_id=call.job_id)
    return Outcome(generation, manifest, pruned, ended)


def _find(call: CheckpointCall, config: Config, spool: Spool, log: Logger) -> _Job:
    """The job's processes (from its session, or its restart's record), refused if any of them is not
    its owner's as passwd says (a setuid program)."""
    system = system_of(call.convention)
    stated_uid = identity.of_name(call.euser).uid if call.euser is not None else None
    processes = discovery.find_job(
        call.top_pid,
        job_id=call.job_id,
        euser=call.euser,
        several_children=config.several_children,
        restart_lookup=lambda job_id: sessions.lookup(spool.root, system, job_id, stated_uid),
    )
    group = identity.group_name(call.egroup, processes.gid)
    owner = identity.of_uid(processes.uid, processes.gid)
    log = log.bind(exec_pid=processes.exec_pid, session_id=processes.leader_pid, user=processes.user)
    if problems := identity.tree_problems([p.pid for p in processes.tree], owner):
        raise Refused(
            f"job {call.job_id}: {problems[0]} (a setuid program?): not checkpointing it, a restart could "
            f"only give it back as {owner.name}"
        )
    _refuse_the_uncheckpointable(call, processes, config)
    log.info("checkpoint.start", found_via=processes.found_via, processes=[p.pid for p in processes.tree])
    return _Job(processes, JobKey(system, processes.uid, call.job_id), owner, group, log)


def _refuse_the_uncheckpointable(
    call: CheckpointCall, processes: discovery.JobProcesses, config: Config
) -> None:
    """Before anything is written: a job holding a device or file kind CRIU cannot dump (RDMA, GPU...),
    and a job that runs on other nodes too (its checkpoint would restore half of it), are refused
    with one line that names the way out (processes.devices, batch.nodes)."""
    if config.backend == "criu":
        from mom_checkpoint.processes import devices

        if line := devices.refusal(devices.undumpable([p.pid for p in processes.tree])):
            raise NotCheckpointable(f"job {call.job_id}: {line}")
    if config.multi_node == "refuse":
        from mom_checkpoint.batch import nodes

        aux_dirs = config.pbs_aux_dirs if call.convention == "openpbs" else config.torque_aux_dirs
        if hosts := nodes.other_hosts(aux_dirs, call.job_id, os.uname().nodename):
            raise NotCheckpointable(nodes.refusal(hosts, job_id=call.job_id))


def _open_checkpoint_dir(call: CheckpointCall, config: Config, job: _Job) -> int | None:
    if call.checkpoint_dir is None or call.checkpoint_name is None:
        return None
    owner = (job.processes.uid, job.processes.gid)
    return open_checkpoint_dir(
        call.checkpoint_dir, *config.checkpoint_roots(call.convention), owner=owner, log=job.log
    )


def _check_space(spool: Spool, job: _Job, config: Config, job_id: str, deadline: float) -> None:
    try:
        check_space(spool, job.processes, config.space_margin, job_id, deadline)
    except DiskFull:
        from mom_checkpoint.spool.usage import biggest_users

        # whose generations take the space: root's log only
        users = [{"user": identity.name_of(uid), "bytes": size} for uid, size in biggest_users(spool)]
        job.log.warning("spool.full", users=users)
        raise


def _keep(call: CheckpointCall, config: Config, log: Logger) -> int:
    """Generations the job keeps: its depth=N, else ``keep``; never more than ``max_keep``."""
    wanted = call.depth or config.keep
    if wanted > config.max_keep:
        log.warning("retention.capped", depth=wanted, max_keep=config.max_keep)
        return config.max_keep
    return wanted


def _storage_owner(config: Config, job: _Job) -> Owner:
    """Who owns the image folder: the job's user when their checkpointer writes it."""
    return Owner(job.processes.uid, job.processes.gid) if config.run_as == "job-user" else Owner(0, 0)


@contextlib.contextmanager
def _locked(
    spool: Spool,
    job: _Job,
    call: CheckpointCall,
    *,
    config: Config,
    env: Environment,
    deadline: float,
    keep: int,
    steps: Steps,
) -> Iterator[tuple[Path, int, Quota | None]]:
    """The job's lock, then (what the job's earlier calls left removed first) a node slot, the user's
    quota checked, and the run folder and the generation's number: (run folder, number, quota)."""
    locks = lock_dir(spool.root)
    with contextlib.ExitStack() as held:
        with steps("lock"):
            held.enter_context(job_lock(locks, job.key.token, call.argv, call.job_id))
            # what the job's earlier calls left (incoming folders, interrupted prunes: the user's own
            # trees, whatever they hold) is removed under the job's lock only, within the call's
            # deadline, before a node slot is taken: it delays this user's call, never another's
            for stale in spool.clean_stale(call.job_id, job.key.token, deadline=deadline):
                job.log.warning("incoming.stale_removed", path=str(stale))
            # one of the node's slots, and never more of them than the user's share (locking.py)
            wait_s = max(0.0, deadline - env.monotonic())
            uid = job.processes.uid
            held.enter_context(
                node_slot(
                    locks, config.max_concurrent, wait_s, uid=uid, sleep=env.sleep, monotonic=env.monotonic
                )
            )
            quota = None
            if config.user_quota_gib > 0:  # checked before anything is written
                from mom_checkpoint.spool.usage import Quota

                quota = Quota.of(spool, config.user_quota_gib, job.processes, call.job_id, keep)
            run_dir = spool.open_run(job.processes.exec_pid_inside, call.job_id)
            number = spool.next_number(call.job_id)
        yield run_dir, number, quota


def _write_pointer(
    call: CheckpointCall, pointer_fd: int | None, generation: Generation, job: _Job, env: Environment
) -> None:
    if pointer_fd is None or call.checkpoint_name is None:
        return
    from mom_checkpoint.image.manifest import iso

    pointer = Pointer.to(call.job_id, str(generation.path), generation.number, iso(env.clock()))
    write_pointer(pointer_fd, call.checkpoint_name, pointer, job.processes.uid, job.processes.gid)


def _prune(
    spool: Spool,
    job: _Job,
    keep: int,
    run_dir: Path,
    *,
    call: CheckpointCall,
    pointer_fd: int | None,
    log: Logger,
) -> tuple[list[Path], list[Path]]:
    from mom_checkpoint.spool.pruning import retire_beyond

    try:
        return retire_beyond(spool, job.key, keep, run_dir, log)
    except BaseException:
        if pointer_fd is not None and call.checkpoint_name is not None:
            remove_pointer(pointer_fd, call.checkpoint_name)  # a failed call leaves no pointer
        raise


def _end(call: CheckpointCall, job: _Job, config: Config, env: Environment, log: Logger) -> list[int]:
    """SIGNAL 15: the job's processes end (SIGTERM, SIGKILL after abort_grace_s), the checkpoint being
    complete and published."""
    if not call.abort:
        return []
    processes = job.processes
    ended = end_session(
        processes.session, processes.uid, config.abort_grace_s, sleep=env.sleep, monotonic=env.monotonic
    )
    log.info("job.ended", signal=call.signal, pids=ended)
    return ended


def _after_the_call(
    retired: list[Path], spool: Spool, config: Config, env: Environment, *, log: Logger, job_id: str
) -> None:
    """What runs after pbs_mom has its answer, detached: removing the pruned generations' files, and
    the copy to the vault."""
    from mom_checkpoint.spool.pruning import remove_detached

    remove_detached(retired, spool, env, log, limit_s=config.timeout_s)
    if config.vault_dir:
        from mom_checkpoint.vault.background import start_detached

        start_detached(config, env, job_id, log)


def _count(
    config: Config,
    env: Environment,
    log: Logger,
    *,
    ok: bool,
    reason: str,
    duration_s: float,
    frozen_s: float | None = None,
    size: int = 0,
) -> None:
    """Update the Prometheus textfile, if configured; a metrics problem never fails the checkpoint."""
    if not config.metrics_file:
        return
    from mom_checkpoint.spool import metrics

    attempt = metrics.Attempt(config.backend, ok, reason, duration_s, frozen_s, size)
    try:
        metrics.record(Path(config.spool_dir), config.metrics_file, attempt, env.clock())
    except Exception as exc:
        log.warning("metrics.failed", error=repr(exc))

"""The hook: checkpoint one job into a new generation, as pbs_mom asks.

parse (cli) -> config -> find the processes -> check CHECKPOINT_DIR, checkpointer, free space
-> job lock -> node slot -> dump into .incoming-* -> hash + fsync (the job runs again) -> manifest
-> publish by rename -> pointer -> prune -> end the job (SIGNAL 15 only, only after all of that).
Every check that can refuse the call runs before anything is written.
"""

from __future__ import annotations

import contextlib
import grp
import importlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mom_checkpoint import __version__, backends
from mom_checkpoint.backends import DumpRequest, DumpResult, JobUser
from mom_checkpoint.batch.calls import CheckpointCall
from mom_checkpoint.batch.jobkey import JobKey, system_of
from mom_checkpoint.batch.pointer import (
    POINTER_KIND,
    POINTER_SCHEMA,
    Pointer,
    open_checkpoint_dir,
    remove_pointer,
    write_pointer,
)
from mom_checkpoint.image.layout import IMAGE, Generation, generation_name
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import DiskFull, Error, Refused, UnknownUser
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.processes import discovery, identity
from mom_checkpoint.processes.termination import end_session, ended_soon, resume_tree, stopped
from mom_checkpoint.spool import sessions
from mom_checkpoint.spool.keeping import OUTPUT_MAX, Copy, keep_held, keep_outputs
from mom_checkpoint.spool.locking import job_lock, lock_dir, node_slot
from mom_checkpoint.spool.storage import Incoming, Owner, Spool, remove_tree

if TYPE_CHECKING:
    import re

    from mom_checkpoint.image.hashing import Follower, ImageFile, Partial
    from mom_checkpoint.image.manifest import GenerationInfo, KeptFile, Manifest
    from mom_checkpoint.spool.usage import Usage

RESERVE_BYTES = 16 * 1024 * 1024  # manifest, logs and CRIU's small image files
PRUNE_GRACE_S = 10.0  # what pruning may take beyond timeout_s (the rest is left for the next call)
IMAGE_MARGIN = 64 * 1024 * 1024  # an image's files beyond the job's memory: CRIU's metadata, logs
LOSS_SETTLE_S = 1.0  # after a failed dump, how long to watch for the job's processes dying of it
FOLLOWER_STOP_S = 10.0  # the most to wait for the follower to stop (it stops within one read)
FOLLOW_FROM_CPUS = 2  # the cores this process may use for the follower to run (CRIU takes one)
# What only the work after the dump uses (hashing, the manifest, pruning): imported while the
# checkpointer runs, when the call has nothing else to do, rather than before it starts.
AFTER_THE_DUMP = (
    "mom_checkpoint.image.hashing",
    "mom_checkpoint.image.manifest",
    "mom_checkpoint.image.verification",
    "mom_checkpoint.spool.retention",
)


@dataclass(frozen=True)
class Outcome:
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
        _count(
            config,
            env,
            log,
            ok=False,
            reason=exc.exit_status.name.lower(),
            duration_s=env.monotonic() - started,
        )
        raise
    manifest = outcome.manifest
    _count(config, env, log, ok=True, reason="ok", duration_s=env.monotonic() - started,
           frozen_s=manifest.times.frozen_s, size=manifest.total_bytes)  # fmt: skip
    return outcome


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


def _checkpoint(call: CheckpointCall, config: Config, env: Environment, log: Logger) -> Outcome:
    started_wall, started = env.clock(), env.monotonic()
    deadline = started + config.timeout_s  # the whole call: waiting, the dump, reading and hashing it
    log = log.bind(job_id=call.job_id, convention=call.convention, argv=list(call.argv))
    spool = Spool(config.spool_dir)
    system = system_of(call.convention)
    stated_uid = identity.of_name(call.euser).uid if call.euser is not None else None
    job = discovery.find_job(
        call.top_pid,
        job_id=call.job_id,
        euser=call.euser,
        several_children=config.several_children,
        restart_lookup=lambda job_id: sessions.lookup(spool.root, system, job_id, stated_uid),
    )
    key = JobKey(system, job.uid, call.job_id)
    group = _group_name(call.egroup, job.gid)
    owner = identity.of_uid(job.uid, job.gid)
    log = log.bind(exec_pid=job.exec_pid, session_id=job.leader_pid, user=job.user)
    if problems := identity.tree_problems([p.pid for p in job.tree], owner):
        raise Refused(
            f"job {call.job_id}: {problems[0]} (a setuid program?): not checkpointing it, a restart could "
            f"only give it back as {owner.name}"
        )
    log.info("checkpoint.start", found_via=job.found_via, processes=[p.pid for p in job.tree])
    pointer_fd = None
    if call.checkpoint_dir is not None and call.checkpoint_name is not None:
        pointer_fd = open_checkpoint_dir(
            call.checkpoint_dir, *config.checkpoint_roots(call.convention), owner=(job.uid, job.gid), log=log
        )
    try:
        from mom_checkpoint.platform.environment import stopped_checkpointer_fails

        # a checkpointer kept stopped (its user can SIGSTOP it in job-user mode) is killed and fails
        # the call (80), rather than hold a node slot until timeout_s (environment.StoppedFails)
        backend = backends.create(config, stopped_checkpointer_fails(env))
        binary = backend.find_binary()
        try:
            _check_space(spool, job, config, call.job_id, deadline)
        except DiskFull:
            _log_spool_users(spool, log)  # whose generations take the space: root's log only
            raise
        keep = _keep(call, config, log)
        spool.ensure_root()
        locks = lock_dir(spool.root)
        storage_owner = Owner(job.uid, job.gid) if config.run_as == "job-user" else Owner(0, 0)
        with job_lock(locks, key.token, call.argv, call.job_id), contextlib.ExitStack() as in_slot:
            # what the job's earlier calls left (incoming folders, interrupted prunes: the user's own
            # trees, whatever they hold) is removed under the job's lock only, within the call's
            # deadline, before a node slot is taken: it delays this user's call, never another's
            for stale in spool.clean_stale(call.job_id, key.token, deadline=deadline):
                log.warning("incoming.stale_removed", path=str(stale))
            # one of the node's slots, and never more of them than the user's share (locking.py)
            wait_s = max(0.0, deadline - env.monotonic())
            slot = node_slot(
                locks, config.max_concurrent, wait_s, uid=job.uid, sleep=env.sleep, monotonic=env.monotonic
            )
            in_slot.enter_context(slot)
            quota = _Quota.of(spool, config, job, call.job_id, keep)  # before anything is written
            run_dir = spool.open_run(job.exec_pid, call.job_id)
            number = spool.next_number(call.job_id)
            log = log.bind(generation=number)
            attempt = _Attempt(
                call,
                config,
                env,
                log,
                job,
                owner,
                group,
                storage_owner,
                backend,
                binary,
                started_wall,
                started,
                deadline,
                quota,
            )
            try:
                generation, manifest = attempt.dump_and_publish(
                    spool.begin(run_dir, storage_owner, key.token), number
                )
            except BaseException:
                spool.remove_if_empty(run_dir)  # a first checkpoint that failed leaves no trace
                raise
            if pointer_fd is not None and call.checkpoint_name is not None:
                pointer = _pointer(call.job_id, generation, env)
                write_pointer(pointer_fd, call.checkpoint_name, pointer, job.uid, job.gid)
            try:
                pruned, retired = _prune(spool, key, keep, run_dir, log)
            except BaseException:
                if pointer_fd is not None and call.checkpoint_name is not None:
                    remove_pointer(pointer_fd, call.checkpoint_name)  # a failed call leaves no pointer
                raise
    finally:
        if pointer_fd is not None:
            os.close(pointer_fd)
    ended: list[int] = []
    if call.abort:
        ended = end_session(
            job.leader_pid, job.uid, config.abort_grace_s, sleep=env.sleep, monotonic=env.monotonic
        )
        log.info("job.ended", signal=call.signal, pids=ended)
    log.info(
        "checkpoint.done",
        path=str(generation.path),
        bytes=manifest.total_bytes,
        dump_s=manifest.times.dump_s,
        frozen_s=manifest.times.frozen_s,
        post_dump_s=manifest.times.post_dump_s,
        total_s=env.monotonic() - started,
        pruned=[str(p) for p in pruned],
    )
    _remove_detached(retired, spool, env, log, limit_s=config.timeout_s)
    if config.vault_dir:  # the copy to the vault runs after this call, never in it
        from mom_checkpoint.vault import sync

        sync.start_detached(config, env, call.job_id, log)
    return Outcome(generation, manifest, pruned, ended)


def _remove_detached(
    retired: list[Path], spool: Spool, env: Environment, log: Logger, *, limit_s: float
) -> None:
    """Remove the pruned generations' files after this call, in a detached process: pbs_mom does not
    wait for the disk to free a large image (they were taken out of the generation names already).
    It stops after ``limit_s`` (timeout_s: a user's folders below an image are no reason to run on),
    and whatever it leaves, the job's next call removes before its dump. If it cannot be started,
    the files are removed here, within PRUNE_GRACE_S."""
    if not retired:
        return

    def remove(deadline: float) -> None:
        for path in retired:
            remove_tree(path, deadline=deadline)
            spool.remove_if_empty(path.parent)  # a run of the job's that nothing else is left in

    try:
        env.detach(lambda: remove(time.monotonic() + limit_s))
    except OSError as exc:
        log.warning("prune.not_detached", error=str(exc))
        remove(env.monotonic() + PRUNE_GRACE_S)


@dataclass(frozen=True)
class _Attempt:
    """One checkpointer run into one incoming generation, and what follows it."""

    call: CheckpointCall
    config: Config
    env: Environment
    log: Logger
    job: discovery.JobProcesses
    owner: JobUser
    group: str
    storage_owner: Owner
    backend: backends.Backend
    binary: str
    started_wall: float
    started: float
    deadline: float  # monotonic: the dump, reading and hashing the image all end by then
    quota: _Quota | None  # the user's share of the spool, when user_quota_gib sets one

    def dump_and_publish(self, incoming: Incoming, number: int) -> tuple[Generation, Manifest]:
        name = generation_name(number, self.started_wall)
        result: DumpResult | None = None
        pids = [p.pid for p in self.job.tree]
        stopped_before = stopped(pids)
        limit = image_limit(self.job, self.config.backends.criu.ghost_limit)
        meanwhile = _WhileItRuns(
            incoming,
            lambda: self.backend.version(self.binary),
            appended=self.backend.appended,
            max_bytes=limit,
            deadline=self.deadline,
        )
        try:
            # before the dump: an abort ends the job
            copies = keep_held(self.job.tree, incoming.path, self.owner, deadline=self.deadline)
            request = DumpRequest(
                exec_pid=self.job.exec_pid,
                image_dir=incoming.image_dir,
                abort=self.call.abort,
                user=self.owner,
                timeout_s=max(1.0, self.deadline - self.env.monotonic()),
                on_start=meanwhile,
                external_files=tuple(c.external for c in copies),
            )
            result = self.backend.checkpoint(self.binary, request)
            dumped = self.env.monotonic()
            # before anything acts as the job's user (keep_outputs): that changes the whole process's
            # credentials, the version query's thread included
            version = meanwhile.version(timeout_s=max(0.0, self.deadline - dumped))
            left = self.deadline - self.env.monotonic()
            hashed = meanwhile.stop_following(timeout_s=min(FOLLOWER_STOP_S, max(0.0, left)))
            self.log.info(
                "dump.done",
                seconds=result.completed.duration_s,
                frozen_s=result.frozen_s,
                hashed_meanwhile=sum(p.offset for p in hashed.values()),
                **meanwhile.follow_problem(),
            )
            if self.call.abort:  # pbs_mom re-creates the output files empty before the restart
                copies += keep_outputs(self.job.tree, incoming.path, self.owner)
            from mom_checkpoint.image.hashing import open_files
            from mom_checkpoint.image.manifest import GenerationInfo

            # The job runs again (or has ended): only now read, hash and fsync the image (of the files
            # the checkpointer appended to, what the follower had not hashed yet).
            relpaths = [f"{IMAGE}/{rel}" for rel in incoming.image_files(self.deadline)]
            with open_files(incoming.path, relpaths, max_bytes=limit, resume=hashed) as image:
                taken_over = image.taken_over
                files = image.digest(fsync=True, deadline=self.deadline)
            if self.quota is not None:
                self.quota.check(sum(f.size for f in files), "this checkpoint")
            held = self._kept(incoming, copies)
            manifest = self._manifest(
                result, GenerationInfo(number, name), files, dumped, held, version=version
            )
            incoming.write_manifest(manifest.to_json())
            generation = incoming.publish(name)
        except BaseException as exc:
            meanwhile.version(timeout_s=1.0)  # the query ends in milliseconds: not left running
            meanwhile.stop_following(timeout_s=1.0)  # nor the follower (one read)
            if result is not None and result.ended_job:
                # The checkpointer already ended the job: this image is all there is. Never delete it.
                kept = incoming.keep_unpublished(number)
                self.log.error("publish.failed_after_job_ended", kept=str(kept), error=str(exc))
                if isinstance(exc, Error):
                    message = f"{exc.message}; the job had already ended: its image is kept at {kept}"
                    raise type(exc)(message) from exc
                raise
            incoming.discard()
            resumed = resume_tree(pids, stopped_before=stopped_before)  # a killed criu may leave them stopped
            lost = ended_soon(pids, LOSS_SETTLE_S, sleep=self.env.sleep, monotonic=self.env.monotonic)
            self.log.error(
                "checkpoint.failed", error=str(exc), kind=type(exc).__name__, resumed=resumed, lost=lost
            )
            if lost and result is None and isinstance(exc, Error):
                # CRIU runs code inside the job while it dumps; if criu dies then, that code traps and
                # the process dies with it. Say so: the user's next step is a restart, not a retry.
                raise type(exc)(
                    f"{exc.message}; {len(lost)} of the job's processes ended during the failed dump "
                    f"(a checkpointer that dies inside a process takes it along): restart the job from "
                    f"its newest complete checkpoint"
                ) from exc
            raise
        self.log.info(
            "generation.published",
            path=str(generation.path),
            bytes=manifest.total_bytes,
            hashed_during_dump=taken_over,  # of the bytes: read while the checkpointer wrote them
        )
        return generation, manifest

    def _kept(self, incoming: Incoming, copies: list[Copy]) -> list[KeptFile]:
        from mom_checkpoint.image.hashing import digest_files
        from mom_checkpoint.image.manifest import KeptFile

        digests = digest_files(incoming.path, [c.copy for c in copies], fsync=True, deadline=self.deadline)
        for copy in copies:
            if copy.cut:
                self.log.warning("output.cut", path=copy.path, kept=OUTPUT_MAX, left_out=copy.cut)
        return [
            KeptFile(
                c.path,
                c.copy,
                "output" if c.role == "output" else "held",
                c.pos,
                d.size,
                d.digest,
                c.external,
                c.mode,
            )
            for c, d in zip(copies, digests, strict=True)
        ]

    def _manifest(
        self,
        result: DumpResult,
        generation: GenerationInfo,
        files: list[ImageFile],
        dumped: float,
        kept: list[KeptFile],
        *,
        version: str,
    ) -> Manifest:
        from mom_checkpoint.image.manifest import (
            SCHEMA,
            BackendInfo,
            CallInfo,
            HostInfo,
            JobInfo,
            Manifest,
            Timings,
            ToolInfo,
        )

        call, job, env = self.call, self.job, self.env
        return Manifest(
            schema=SCHEMA,
            tool=ToolInfo("mom-checkpoint", __version__),
            job=JobInfo(
                id=call.job_id,
                session_id=job.leader_pid,
                leader_pid=job.leader_pid,
                exec_pid=job.exec_pid,
                user=job.user,
                uid=job.uid,
                group=self.group,
                gid=job.gid,
                found_via=job.found_via,
            ),
            call=CallInfo(
                convention=call.convention,
                argv=list(call.argv),
                signal=call.signal,
                depth=call.depth,
                checkpoint_dir=call.checkpoint_dir,
                checkpoint_name=call.checkpoint_name,
            ),
            host=HostInfo(os.uname().nodename, os.uname().release),
            generation=generation,
            backend=BackendInfo(
                name=self.backend.name,
                command=result.command,
                version=version,
                exit_status=result.completed.returncode,
                run_as=self.config.run_as,
                ended_job=result.ended_job,
            ),
            times=Timings(
                started=_iso(self.started_wall),
                finished=_iso(env.clock()),
                dump_s=round(result.completed.duration_s, 6),
                frozen_s=result.frozen_s,
                post_dump_s=round(env.monotonic() - dumped, 6),
                total_s=round(env.monotonic() - self.started, 6),
            ),
            processes=job.tree,
            files=files,
            total_bytes=sum(f.size for f in files),
            stats=result.stats,
            kept=kept,
        )


class _WhileItRuns:
    """What the call does once the checkpointer has started, while it waits for it anyway: record its
    pid (for the next call, should this one die), ask the checkpointer's version for the manifest
    (``criu --version``: 10-15 ms, a thread of its own), import what the work after the dump needs
    (AFTER_THE_DUMP, ~15 ms), and hash the files the checkpointer only appends to as it writes them
    (hashing.Follower, a thread of its own). Before, all of it came after the dump, on the way to the
    image being on disk. Nothing of it may end the checkpointer (the runner kills it if this raises,
    and a checkpointer killed inside the job can take the job along): the version is informational, a
    module that cannot be imported now fails again after the dump, where it harms nothing, and a file
    the follower could not hash is hashed after the dump."""

    def __init__(
        self,
        incoming: Incoming,
        ask_version: Callable[[], str],
        *,
        appended: re.Pattern[str] | None = None,
        max_bytes: int | None = None,
        deadline: float | None = None,
    ) -> None:
        self._incoming = incoming
        self._ask_version = ask_version
        self._asking: threading.Thread | None = None
        self._version = "unknown"
        self._appended = appended
        self._max_bytes = max_bytes
        self._deadline = deadline
        self._follower: Follower | None = None

    def __call__(self, pid: int) -> None:
        self._incoming.record_checkpointer(pid)
        with contextlib.suppress(Exception):
            self._asking = threading.Thread(target=self._ask, name="checkpointer-version", daemon=True)
            self._asking.start()
        with contextlib.suppress(Exception):
            self._start_following()
        with contextlib.suppress(Exception):
            for name in AFTER_THE_DUMP:
                importlib.import_module(name)

    def _start_following(self) -> None:
        # only with a core to spare: on one core the follower would take CRIU's while the job is frozen
        if self._appended is None or len(os.sched_getaffinity(0)) < FOLLOW_FROM_CPUS:
            return
        from mom_checkpoint.image.hashing import Follower

        follower = Follower(
            self._incoming.path, IMAGE, self._appended, max_bytes=self._max_bytes, deadline=self._deadline
        )
        follower.start()
        self._follower = follower

    def _ask(self) -> None:
        with contextlib.suppress(Exception):  # informational only: never a reason to fail the call
            self._version = self._ask_version()

    def version(self, timeout_s: float) -> str:
        """The checkpointer's version, "unknown" if it could not say within ``timeout_s``."""
        if self._asking is None:  # a checkpointer that never started (a stand-in runner, say)
            self._ask()
        elif self._asking.ident is not None:  # started
            self._asking.join(timeout_s)
        return self._version

    def stop_following(self, timeout_s: float) -> dict[str, Partial]:
        """Tell the follower to stop and wait for it (at most ``timeout_s``): what it hashed of each
        file, by path below the incoming folder (nothing if there was no follower, it failed, or it had
        not stopped by then). Called before anything acts as the job's user, as for the version."""
        if self._follower is None:
            return {}
        return self._follower.stop(timeout_s)

    def follow_problem(self) -> dict[str, str]:
        """Why the follower handed nothing over, for the log (empty if it did, or there was none)."""
        follower = self._follower
        if follower is not None and follower.error is not None:
            return {"follow_error": f"{type(follower.error).__name__}: {follower.error}"}
        if follower is not None and follower.still_running:
            return {"follow_error": "the follower had not stopped in time: its files were hashed anew"}
        return {}


def _generations_of(spool: Spool, key: JobKey) -> list[Generation]:
    from mom_checkpoint.image.verification import read_trusted_manifest

    mine = []
    for generation in spool.job_generations(key.job_id):
        try:
            if read_trusted_manifest(generation.path).key == key:
                mine.append(generation)
        except Error:
            continue
    return mine


def _keep(call: CheckpointCall, config: Config, log: Logger) -> int:
    """Generations the job keeps: its depth=N, else ``keep``; never more than ``max_keep``."""
    wanted = call.depth or config.keep
    if wanted > config.max_keep:
        log.warning("retention.capped", depth=wanted, max_keep=config.max_keep)
        return config.max_keep
    return wanted


@dataclass(frozen=True)
class _Quota:
    """``user_quota_gib``: what the job's user's generations may hold once this one is in and the job
    pruned, checked on the estimate before the dump and on the real size before publishing."""

    usage: Usage
    uid: int
    user: str
    job_id: str
    keep: int
    limit: int

    @classmethod
    def of(
        cls, spool: Spool, config: Config, job: discovery.JobProcesses, job_id: str, keep: int
    ) -> _Quota | None:
        if config.user_quota_gib <= 0:
            return None
        from mom_checkpoint.spool import usage as usage_module

        limit = int(config.user_quota_gib * 2**30)
        quota = cls(usage_module.scan(spool), job.uid, job.user, job_id, keep, limit)
        quota.check(job.resident_bytes + job.swap_bytes, "this checkpoint (about the job's memory)")
        return quota

    def check(self, new_bytes: int, what: str) -> None:
        from mom_checkpoint.spool import usage as usage_module

        after = usage_module.after_checkpoint(self.usage, self.uid, self.job_id, self.keep, new_bytes)
        if after > self.limit:
            now = self.usage.by_uid.get(self.uid, 0)
            raise DiskFull(
                f"{self.user}'s checkpoints on this node hold {_mib(now)}; with {what} they would hold "
                f"{_mib(after)}, more than user_quota_gib allows ({_mib(self.limit)}): not keeping it, the "
                f"job keeps running (fewer generations: qsub -c depth=N; or remove old ones)"
            )


def _log_spool_users(spool: Spool, log: Logger) -> None:
    from mom_checkpoint.spool import usage as usage_module

    usage = usage_module.scan(spool)
    biggest = usage.by_uid.most_common(5)
    log.warning("spool.full", users=[{"user": identity.name_of(uid), "bytes": size} for uid, size in biggest])


def image_limit(job: discovery.JobProcesses, ghost_limit: int) -> int:
    """The most an honest image of this job holds: its memory, resident and swapped, twice over (CRIU
    writes each page once, plus its page maps and whatever the job allocates during the dump), what
    CRIU copies of the files the job holds that have no name left (discovery.unlinked_files: a
    ghost file, up to ``ghost_limit`` each, of every deleted regular file held or mapped; the pages
    of each memfd and shared anonymous mapping), and a margin for the rest. Nothing else the job's
    user controls adds to it: a descriptor of a file with a name (/dev/null, say) is not copied
    into the image, so it adds nothing. More than that, in a folder the job's user may write
    (job-user mode), is not read: the checkpoint is refused."""
    unlinked = sum(
        f.allocated if f.shared_memory else min(f.size, ghost_limit)
        for f in discovery.unlinked_files(job.tree)
    )
    return 2 * (job.resident_bytes + job.swap_bytes) + unlinked + IMAGE_MARGIN


def _check_space(
    spool: Spool, job: discovery.JobProcesses, config: Config, job_id: str, deadline: float
) -> None:
    if config.space_margin == 0:
        return
    needed = int(job.resident_bytes * config.space_margin) + RESERVE_BYTES
    free = spool.free_bytes()
    if free < needed and (leftovers := spool.pruned_leftovers(job_id)):
        # what the job's last call pruned may still be being removed (after that call, detached):
        # that space is the job's own, so finish removing it before counting
        for path in leftovers:
            remove_tree(path, deadline=deadline)
        free = spool.free_bytes()
    if free < needed:
        raise DiskFull(
            f"spool {spool.root} has {_mib(free)} free, the job needs about {_mib(needed)} "
            f"(resident memory x space_margin={config.space_margin:g}): not starting the checkpoint"
        )


def _pointer(job_id: str, generation: Generation, env: Environment) -> Pointer:
    return Pointer(
        kind=POINTER_KIND,
        schema=POINTER_SCHEMA,
        job_id=job_id,
        host=os.uname().nodename,
        generation=str(generation.path),
        number=generation.number,
        created=_iso(env.clock()),
    )


def _prune(
    spool: Spool, key: JobKey, keep: int, current_run: Path, log: Logger
) -> tuple[list[Path], list[Path]]:
    """Retire the job key's generations beyond ``keep`` (only ever after a new one is complete: one
    rename each; their files are removed after the call, _remove_detached) and remove emptied runs. A
    generation of the same job id from another batch system or owner, or one whose manifest root
    cannot vouch for, is never this job's to prune. Returns the generations pruned and their new
    paths."""
    from mom_checkpoint.spool import retention

    removed, retired = [], []
    job_id = key.job_id
    for verdict in retention.plan(_generations_of(spool, key), keep):
        if not verdict.keep:
            retired.append(spool.retire(verdict.item))
            removed.append(verdict.item.path)
            log.info("generation.pruned", path=str(verdict.item.path), reason=verdict.reason)
    for run_dir in spool.runs_of(job_id):
        if run_dir != current_run and not any(os.scandir(run_dir)):
            os.rmdir(run_dir)
    return removed, retired


def _group_name(egroup: str | None, gid: int) -> str:
    if egroup is not None:
        try:
            grp.getgrnam(egroup)
        except KeyError:
            raise UnknownUser(f"EGROUP {egroup!r} is not a group on this node") from None
        return egroup
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"

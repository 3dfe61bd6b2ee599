"""One checkpointer run into one incoming generation: dump, seal (hash, fsync, manifest), publish.

If anything fails, the incoming folder goes and the job is resumed as it was; once the checkpointer
has ended the job, its image is all there is and is kept whatever else fails.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import msgspec

from mom_checkpoint import __version__, backends
from mom_checkpoint.backends import DumpRequest, DumpResult, JobUser
from mom_checkpoint.batch.calls import CheckpointCall
from mom_checkpoint.commands.checkpoint.meanwhile import AFTER_THE_DUMP, WhileItRuns
from mom_checkpoint.image.layout import IMAGE, Generation, generation_name
from mom_checkpoint.image.size import image_limit
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import Error
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.platform.steps import Steps
from mom_checkpoint.processes import discovery
from mom_checkpoint.processes.termination import ended_soon, resume_tree, stopped
from mom_checkpoint.spool.keeping import OUTPUT_MAX, Copy, keep_held, keep_outputs
from mom_checkpoint.spool.storage import Incoming

if TYPE_CHECKING:
    from mom_checkpoint.image.hashing import ImageFile, Partial
    from mom_checkpoint.image.manifest import KeptFile, Manifest
    from mom_checkpoint.spool.usage import Quota
    from mom_checkpoint.vault.seal import Sealing

LOSS_SETTLE_S = 1.0  # after a failed dump, how long to watch for the job's processes dying of it
FOLLOWER_STOP_S = 10.0  # the most to wait for the follower to stop (it stops within one read)


class Dumped(msgspec.Struct, frozen=True):
    """What the dump left: the checkpointer's result, the copies of the job's files, what the follower
    hashed already, the checkpointer's version, and when it ended (monotonic)."""

    result: DumpResult
    copies: list[Copy]
    hashed: dict[str, Partial]
    version: str
    at: float


class Attempt(msgspec.Struct, frozen=True):
    call: CheckpointCall
    config: Config
    env: Environment
    log: Logger
    steps: Steps
    job: discovery.JobProcesses
    owner: JobUser
    group: str
    backend: backends.Backend
    binary: str
    started_wall: float
    started: float
    deadline: float  # monotonic: the dump, reading and hashing the image all end by then
    quota: Quota | None  # the user's share of the spool, when user_quota_gib sets one

    def run(self, incoming: Incoming, number: int) -> tuple[Generation, Manifest]:
        """dump -> seal -> publish; the generation, complete, and its manifest."""
        pids = [p.pid for p in self.job.tree]
        stopped_before = stopped(pids)
        limit = image_limit(self.job, self.config.backends.criu.ghost_limit)
        meanwhile = WhileItRuns(
            incoming,
            lambda: self.backend.version(self.binary),
            appended=self.backend.appended,
            max_bytes=limit,
            deadline=self.deadline,
            # with a vault, the seal's module too (vault/seal.py: 10 ms to import here)
            imports=AFTER_THE_DUMP + (("mom_checkpoint.vault.seal",) if self.config.vault_dir else ()),
        )
        result: DumpResult | None = None
        try:
            with self.steps("dump"):
                dumped = self._dump(incoming, meanwhile)
                result = dumped.result
            with self.steps("seal"):
                manifest, taken_over = self._seal(incoming, number, dumped, limit)
            with self.steps("publish"):
                generation = incoming.publish(manifest.generation.name)
        except BaseException as exc:
            meanwhile.version(timeout_s=1.0)  # the query ends in milliseconds: not left running
            meanwhile.stop_following(timeout_s=1.0)  # nor the follower (one read)
            self._failed(exc, incoming, number, result=result, pids=pids, stopped_before=stopped_before)
            raise
        self.log.info(
            "generation.published",
            path=str(generation.path),
            bytes=manifest.total_bytes,
            hashed_during_dump=taken_over,  # of the bytes: read while the checkpointer wrote them
        )
        return generation, manifest

    def _dump(self, incoming: Incoming, meanwhile: WhileItRuns) -> Dumped:
        """The checkpointer's run (with SIGNAL 15 it ends the job), and what was kept of the job's
        files around it."""
        copies = keep_held(
            self.job.tree, incoming.path, self.owner, deadline=self.deadline
        )  # before an abort
        request = DumpRequest(
            exec_pid=self.job.exec_pid_inside,
            namespaces=self.job.namespaces,
            host_pid=self.job.exec_pid,
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
        return Dumped(result, copies, hashed, version, dumped)

    def _seal(self, incoming: Incoming, number: int, dumped: Dumped, limit: int) -> tuple[Manifest, int]:
        """The job runs again (or has ended): only now read, hash and fsync the image (of the files the
        checkpointer appended to, what the follower had not hashed yet) and the kept files, and write
        the manifest. The manifest, and how many bytes were hashed while the checkpointer wrote them."""
        from mom_checkpoint.image.hashing import open_files

        relpaths = [f"{IMAGE}/{rel}" for rel in incoming.image_files(self.deadline)]
        sealing = self._sealing(incoming, relpaths, [c.copy for c in dumped.copies], limit)
        try:
            with open_files(
                incoming.path, relpaths, max_bytes=limit, resume=dumped.hashed, single_link=True
            ) as image:
                taken_over = image.taken_over
                files = image.digest(fsync=True, deadline=self.deadline)
            if self.quota is not None:
                self.quota.check(sum(f.size for f in files), "this checkpoint")
            kept = self._kept(incoming, dumped.copies)
            manifest = self._manifest(dumped, number, files, kept)
            if sealing is not None:
                self._write_chunks(incoming, sealing, manifest)
        finally:
            if sealing is not None:
                sealing.cancel()
        incoming.write_manifest(manifest.to_json())
        return manifest, taken_over

    def _sealing(self, incoming: Incoming, image: list[str], kept: list[str], limit: int) -> Sealing | None:
        """With a vault: each chunk of the generation hashed for its copier while the files are
        hashed and fsync'd (vault/seal.py); nothing of it fails the checkpoint."""
        if not self.config.vault_dir:
            return None
        from mom_checkpoint.vault.seal import Sealing

        try:
            kept_bytes = sum(os.lstat(incoming.path / copy).st_size for copy in kept)  # root's copies
            return Sealing(
                incoming.path, [*image, *kept], max_bytes=limit + kept_bytes, deadline=self.deadline
            )
        except Exception as exc:  # (a thread that cannot start)
            self.log.warning("seal.no_chunk_index", error=f"{type(exc).__name__}: {exc}")
            return None

    def _write_chunks(self, incoming: Incoming, sealing: Sealing, manifest: Manifest) -> None:
        """The chunks recorded beside the manifest; a generation without them is copied all the
        same (its copier hashes the whole image): nothing of it fails the checkpoint."""

        if problem := sealing.record(incoming.path, manifest.every_file, deadline=self.deadline):
            self.log.warning("seal.no_chunk_index", error=problem)

    def _failed(
        self,
        exc: BaseException,
        incoming: Incoming,
        number: int,
        *,
        result: DumpResult | None,
        pids: list[int],
        stopped_before: set[int],
    ) -> None:
        """After a failure: keep an image the checkpointer already ended the job for, else discard the
        incoming folder and resume the job; raise what the user must be told instead of ``exc``."""
        if result is not None and result.ended_job:
            # The checkpointer already ended the job: this image is all there is. Never delete it.
            kept = incoming.keep_unpublished(number)
            self.log.error("publish.failed_after_job_ended", kept=str(kept), error=str(exc))
            if isinstance(exc, Error):
                message = f"{exc.message}; the job had already ended: its image is kept at {kept}"
                raise type(exc)(message) from exc
            return
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
        self, dumped: Dumped, number: int, files: list[ImageFile], kept: list[KeptFile]
    ) -> Manifest:
        from mom_checkpoint.image import manifest as m

        env, result = self.env, dumped.result
        return m.Manifest(
            schema=m.SCHEMA,
            tool=m.ToolInfo("mom-checkpoint", __version__),
            job=m.JobInfo.of(self.call.job_id, self.job, self.group),
            call=m.CallInfo.of(self.call),
            host=m.HostInfo.here(),
            generation=m.GenerationInfo(number, generation_name(number, self.started_wall)),
            backend=m.BackendInfo(
                name=self.backend.name,
                command=result.command,
                version=dumped.version,
                exit_status=result.completed.returncode,
                run_as=self.config.run_as,
                ended_job=result.ended_job,
            ),
            times=m.Timings(
                started=m.iso(self.started_wall),
                finished=m.iso(env.clock()),
                dump_s=round(result.completed.duration_s, 6),
                frozen_s=result.frozen_s,
                post_dump_s=round(env.monotonic() - dumped.at, 6),
                total_s=round(env.monotonic() - self.started, 6),
            ),
            processes=self.job.seen_inside(),
            files=files,
            total_bytes=sum(f.size for f in files),
            stats=result.stats,
            kept=kept,
        )

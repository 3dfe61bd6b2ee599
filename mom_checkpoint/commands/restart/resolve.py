"""Which generation a restart brings back, whose it is, and for whom (the owner from passwd, never the
image)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import msgspec

from mom_checkpoint.batch.jobkey import SYSTEMS, JobKey, system_of
from mom_checkpoint.batch.pointer import open_checkpoint_dir, read_pointer
from mom_checkpoint.commands.restart.calls import RestartCall, SeedRestart, TorqueRestart
from mom_checkpoint.image.layout import GENERATION_NAME
from mom_checkpoint.image.manifest import Manifest
from mom_checkpoint.image.verification import TrustedGeneration
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import (
    Error,
    NoCheckpoint,
    NoSuchProcess,
    NotYetInVault,
    Refused,
    StorageIOError,
    VerificationFailed,
)
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.processes import identity
from mom_checkpoint.processes.access import acting_as
from mom_checkpoint.processes.identity import JobUser
from mom_checkpoint.spool.storage import RUN_NAME, Spool

VAULT_ANSWER_S = 30.0  # how long a restart waits for the vault to list a job's copies
_GENERATION_PATH = re.compile(r"(\d+)\.(.+)/(\d{6,}-\d{8}T\d{6}Z)")


def stated_owner(call: RestartCall) -> JobUser | None:
    """The owner the batch system names: TORQUE's EUSER (and EGROUP), OpenPBS's %login."""
    if isinstance(call, TorqueRestart) and call.euser is not None:
        return identity.of_name(call.euser, call.egroup)
    return None


def owner_of(call: RestartCall, stated: JobUser | None, record: Manifest) -> JobUser:
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
            raise no_checkpoint(call, None)
        what = call.job_id or (call.image if isinstance(call, SeedRestart) else None)
        raise Refused(
            f"{what}: the checkpoint is of uid {record.job.uid} ({record.job.user}), not of {user.name} "
            f"({user.uid}): refusing"
        )
    return user


def resolve(
    call: RestartCall, spool: Spool, config: Config, log: Logger, owner: JobUser | None, *, deadline: float
) -> TrustedGeneration:
    """The generation to restore and its manifest (root's record of it, read before anything is
    hashed). With an owner known, only that owner's generations of the job are candidates. With a
    vault, a newer generation there (or the only one: this node never ran the job, or lost its
    spool) is first copied into the local spool, checked as it is copied, and restored from there."""
    if isinstance(call, SeedRestart) and call.image is not None:
        path = _spool_generation(spool, call.image) if call.own else Path(call.image)
        if path is None or not path.is_dir():
            raise no_checkpoint(call, spool)
        return _record_of(path, call)
    job_id = call.job_id
    assert job_id is not None
    own = isinstance(call, SeedRestart) and call.own
    # the batch system that calls knows only its own jobs: the same id from the other is another job
    system = system_of(call.convention) if isinstance(call, TorqueRestart) else None
    fetch = VaultFetch(config, spool, log, job_id, owner, system, deadline)
    local = max((g.number for g in spool.job_generations(job_id)), default=0)
    if isinstance(call, TorqueRestart) and call.checkpoint_dir and call.checkpoint_name:
        pointed = _follow_pointer(call, spool, config, log)
        if isinstance(pointed, Path):
            return TrustedGeneration.read(pointed)
        if pointed is not None and int(pointed.split("-", 1)[0]) > local and config.vault_dir:
            # the checkpoint the batch system took last was made on another node
            if (fetched := fetch.newest(name=pointed)) is not None:
                return fetched
            raise NotYetInVault(pointed, job_id)
    if (fetched := fetch.newest(newer_than=local)) is not None:
        return fetched
    for generation in reversed(spool.job_generations(job_id)):
        try:
            found = TrustedGeneration.read(generation.path)
        except Error as exc:
            if not own:
                raise  # the newest generation is unusable: say why, never fall back to older state
            log.warning("restart.generation_skipped", path=str(generation.path), error=exc.message)
            continue  # for a sudo caller, a generation root cannot vouch for is not theirs
        record = found.manifest
        if (owner is not None and record.job.uid != owner.uid) or (
            system is not None and system_of(record.call.convention) != system
        ):
            log.info("restart.another_job", path=str(generation.path), owner=record.job.uid,
                     convention=record.call.convention)  # fmt: skip
            continue
        log.info("restart.newest", job_id=job_id, path=str(generation.path))
        return found
    raise no_checkpoint(call, spool)


class VaultFetch(msgspec.Struct, frozen=True):
    """The job's generations in the vault, for this caller: the same owner and batch system filters
    as in the spool, and root's manifest read again once the copy is local."""

    config: Config
    spool: Spool
    log: Logger
    job_id: str
    owner: JobUser | None
    system: str | None
    deadline: float

    def newest(self, *, newer_than: int = 0, name: str | None = None) -> TrustedGeneration | None:
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
        try:
            fetched = bounded(
                lambda: str(vault.fetch(newest, self.spool, deadline=self.deadline)),
                max(1.0, self.deadline - time.monotonic()),
                f"copying {newest.path} into the spool",
            )
        except VerificationFailed as exc:
            if name is None and newer_than > 0:  # a damaged copy: this node's own generation instead
                self.log.warning("restart.vault_copy_refused", source=str(newest.path), error=exc.message)
                return None
            raise
        found = TrustedGeneration.read(Path(fetched))
        record = found.manifest
        if record.job.id != self.job_id or not self._mine(record.key.token):
            raise Refused(f"{newest.path} holds another job's checkpoint: refusing it")
        self.log.info("restart.fetched", source=str(newest.path), path=fetched, bytes=record.total_bytes)
        return found

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


def _record_of(path: Path, call: SeedRestart) -> TrustedGeneration:
    if not call.own:
        return TrustedGeneration.read(path)
    try:
        return TrustedGeneration.read(path)
    except Error:
        raise no_checkpoint(call, None) from None


def no_checkpoint(call: RestartCall, spool: Spool | None) -> NoCheckpoint:
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
    """The generation named at CHECKPOINT_DIR/CHECKPOINT_NAME, in this node's spool, if that is usable;
    its name alone when it is not there (the vault may have it); None to fall back.

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
    # the pointer names a generation by its run folder and its name, the same on every node; the
    # spool it was written in (the node that wrote it, its spool_dir) does not matter here (issue 28 #7)
    named = Path(os.path.normpath(pointer.generation))
    match = _GENERATION_PATH.fullmatch("/".join(named.parts[-2:]))
    if pointer.job_id != call.job_id or match is None or match.group(2) != call.job_id:
        # the pointer's text is the user's: the log has it (JSON-escaped), the one line does not
        log.warning("restart.pointer_foreign", named=pointer.generation[:512], job_named=pointer.job_id[:128])
        raise Refused(
            f"the pointer {call.checkpoint_name} names no checkpoint of job {call.job_id} in {spool.root}"
        )
    target = spool.root / match.group(0)
    if not target.is_dir():
        log.warning("restart.pointer_stale", path=str(target), named=pointer.generation[:512])
        return match.group(3)
    return target


def sudo_caller(call: RestartCall, env: Environment) -> JobUser | None:
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


def check_cwd(cwd: str, user: JobUser) -> None:
    """--own: the working directory must be one the calling user may enter."""
    try:
        with acting_as(user):
            os.close(os.open(cwd, os.O_RDONLY | os.O_DIRECTORY))
    except OSError as exc:
        raise Refused(f"--cwd {cwd}: {exc.strerror} for {user.name}") from None

"""The vault: a second copy of each checkpoint, on storage every node mounts, that outlives the node.

    <vault_dir>/                                  root's 0700, on a file system all nodes mount
        <system>.<uid>.<job id>/                  one job (its key, jobkey.py), root's 0700
            <number>-<UTC time>/                  a complete generation: the spool's name, files, manifest
            .incoming-<name>.<host>.<pid>/        a copy being written; never listed, never read
            .pruning-<name>.<host>.<pid>/         a generation being removed
            .lock/                                the job's copier (one at a time, across nodes)
                holder.json                       host, pid, start time; its mtime is the heartbeat

The local spool stays the fast level: a checkpoint is complete when it is published there, and the
copy here is made afterwards by a detached ``vault-sync``, never on pbs_mom's or the job's time. A
copy is written under ``.incoming-*``, each file hashed as it is written and checked against the
manifest, fsync'd, the manifest written last, then published by one rename: a folder with a
generation name is complete, whatever was killed when. Older generations of the job are removed only
after a newer one is complete here. Root's alone, like the spool: a vault generation is trusted only
as a local one is (root's manifest in root's folders), and restoring from it goes through the same
checks, after it has been copied back into the local spool.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from mom_checkpoint.batch.jobkey import JobKey
from mom_checkpoint.image.hashing import Hasher, ImageFile, algorithm_of, finish, hasher
from mom_checkpoint.image.layout import GENERATION_NAME, MANIFEST, Generation
from mom_checkpoint.image.manifest import Manifest
from mom_checkpoint.image.verification import read_trusted_manifest
from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.errors import Busy, DiskFull, Error, Refused, StorageIOError, VerificationFailed
from mom_checkpoint.platform.files import (
    check_private_dir,
    fsync_dir,
    root_folder_problem,
    storage_error,
    sync_file_system,
    write_all,
)
from mom_checkpoint.platform.safefs import remove_tree
from mom_checkpoint.processes.procfs import start_token
from mom_checkpoint.spool.storage import INCOMING_PREFIX, PRUNING_PREFIX, Spool
from mom_checkpoint.vault.chunked import (
    Sent,
    check_publish_time,
    cut,
    encode_piece,
    ensure_present,
    opened_generation,
    reassemble,
    write_new,
)
from mom_checkpoint.vault.chunked import check as check_chunks
from mom_checkpoint.vault.chunks import CHUNKS, SINCE, ChunkStore, Codec
from mom_checkpoint.vault.collect import COLLECTOR, Collected, due, lease, owner_tokens, referenced_by
from mom_checkpoint.vault.collect import collect as collect_store
from mom_checkpoint.vault.index import INDEX, Index, has_index
from mom_checkpoint.vault.index import read as read_index
from mom_checkpoint.vault.index import write as write_index

LOCK = ".lock"
HOLDER = "holder.json"
LOCK_STALE_S = 300.0  # a holder on another node that has not beaten its heart for this long is gone
HEARTBEAT_S = 10.0
CHUNK = 4 << 20
SNAPSHOT_PREFIX = ".vaulting-"  # in a run folder of the spool: hard links of a generation being copied


class VaultUnavailable(StorageIOError):
    """The vault is missing, not mounted, full, read-only, or not safe: the copy waits for the next sync."""


class VaultOverQuota(DiskFull):
    """The copy would take its owner's copies in the vault past their share (vault_quota_gib)."""


class VaultDeadline(StorageIOError):
    """The copy did not finish by its deadline: stopped, and its partial copy removed."""


def copied_bytes(manifest: Manifest) -> int:
    """What a copy of the generation holds in the vault: its image and kept files, as the manifest
    lists them (a copy reads no byte beyond a file's recorded size)."""
    return manifest.total_bytes + sum(k.size for k in manifest.kept)


class Share(msgspec.Struct, frozen=True):
    """One owner's share of the shared vault (vault_quota_gib): what their chunks (every chunk file of
    their store, vault/chunks.py) and their full copies of the vault's first layout may hold, over
    every node and batch system, once this copy is in and the job's older full copies beyond ``keep``
    are pruned."""

    limit: int  # bytes
    keep: int
    named: str = "vault_quota_gib"  # where the limit comes from, for the refusal's line
    # the owner's other jobs' full copies, as a caller copying many jobs read them once
    # (Vault.held_by); None: read them now. The job's own are always read afresh, under its lock.
    others: dict[str, list[int]] | None = None

    def check(self, vault: Vault, key: JobKey, manifest: Manifest, chunks: int, new: int) -> None:
        """``chunks``: the bytes of the owner's chunk files now; ``new``: what this copy adds to them
        at most (its new chunks, uncompressed)."""
        held = dict(vault.held_by(key.uid) if self.others is None else self.others)
        mine = held[key.token] = vault.held_in(key.token)
        stays = mine[-(self.keep - 1) :] if self.keep > 1 else []
        full_copies = sum(sum(sizes) for sizes in held.values())
        now = chunks + full_copies
        after = now - sum(mine) + sum(stays) + new
        if after > self.limit:
            raise VaultOverQuota(
                f"uid {key.uid}'s copies in the vault hold {_mib(now)}; with {manifest.generation.name} of "
                f"job {key.job_id} ({_mib(new)} new) they would hold {_mib(after)}, more than {self.named} "
                f"allows ({_mib(self.limit)}): not copying it"
            )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _check_copy_deadline(deadline: float | None, name: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise VaultDeadline(
            f"the copy of {name} did not finish by its deadline: stopped, its partial copy removed "
            f"(the next vault-sync tries again)"
        )


class VaultGeneration(msgspec.Struct, frozen=True):
    path: Path
    number: int
    created: str
    key: str  # the job key's token: the folder it is in

    @property
    def name(self) -> str:
        return self.path.name


Throttle = Callable[[int], None]  # told the bytes just written; sleeps to keep to a bandwidth


def order(generation: VaultGeneration) -> tuple[int, str]:
    """Oldest first: by number, and for one number made on two nodes (a node thought lost that came
    back), by the time in its name: the later one is the job's live history."""
    return generation.number, generation.created


class Vault:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- the vault root --------------------------------------------------------------------------------
    def check_root(self, spool_root: Path | None = None) -> None:
        """The vault must exist already (a missing mount point is never created on the node's own
        disk), be a real folder, root's, closed to everyone else, and not on the spool's file system
        (an empty mount point of a vault that is not mounted is)."""
        try:
            st = os.lstat(self.root)
        except FileNotFoundError:
            raise VaultUnavailable(f"the vault {self.root} does not exist (not mounted?)") from None
        except OSError as exc:
            raise VaultUnavailable(f"the vault {self.root} cannot be reached: {exc.strerror}") from None
        if problem := root_folder_problem(st, 0o700, " (an NFS export with root_squash?)"):
            raise Refused(f"the vault {self.root} {problem}: refusing")
        try:
            same = spool_root is not None and os.stat(spool_root).st_dev == st.st_dev
        except OSError:
            same = False
        if same:
            raise VaultUnavailable(
                f"the vault {self.root} is on the spool's file system (not mounted?): not copying there"
            )

    def job_dir(self, key: JobKey) -> Path:
        return self.root / key.token

    def open_job(self, key: JobKey) -> Path:
        path = self.job_dir(key)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise vault_error(exc, f"cannot create {path}") from None
        check_private_dir(path, 0o700)
        return path

    # -- what is in it ---------------------------------------------------------------------------------
    def job_keys(self, job_id: str | None = None) -> list[str]:
        """The tokens of the job folders (of one job id: any system, any owner)."""
        try:
            names = [e.name for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise VaultUnavailable(f"cannot list the vault {self.root}: {exc.strerror}") from None
        keys = {n: JobKey.from_token(n) for n in names if not n.startswith(".")}
        return sorted(n for n, key in keys.items() if key is not None and job_id in (None, key.job_id))

    def generations(self, token: str) -> list[VaultGeneration]:
        """Complete generations of one job folder, oldest first."""
        folder = self.root / token
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise VaultUnavailable(f"cannot list {folder}: {exc.strerror}") from None
        found = []
        for entry in entries:
            match = GENERATION_NAME.fullmatch(entry.name)
            with contextlib.suppress(OSError):
                if match and entry.is_dir(follow_symlinks=False):
                    found.append(
                        VaultGeneration(Path(entry.path), int(match.group(1)), match.group(2), token)
                    )
        return sorted(found, key=order)

    def has(self, key: JobKey, name: str) -> bool:
        return (self.job_dir(key) / name).is_dir()

    # -- the copier's lock -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, key: JobKey) -> Iterator[_Heartbeat]:
        """Hold the job's copier lock in the vault (a folder: mkdir is atomic on every shared file
        system), or raise Busy. Yields the heartbeat, to be called while copying. A holder on this
        host whose process is gone, or any holder whose heartbeat stopped LOCK_STALE_S ago, is
        cleared; then whatever a killed copier left (incoming, pruning) is removed."""
        folder = self.open_job(key)
        with _held(folder / LOCK, f"job {key.job_id} is being copied to the vault") as beat:
            for entry in os.scandir(folder):  # nobody else copies this job now: leftovers are dead
                if entry.name.startswith((INCOMING_PREFIX, PRUNING_PREFIX)):
                    remove_tree(Path(entry.path))
            yield beat

    def collect(self, uid: int, *, when_due: bool = True) -> Collected | None:
        """Collect the owner's chunks that no complete generation references (vault/collect.py), if
        their store was not collected in the last COLLECT_EVERY_S (or ``when_due`` is false) and no
        other collector of theirs runs (None then)."""
        store = ChunkStore(self.root, uid)
        if not store.root.is_dir() or (when_due and not due(store)):
            return None
        try:
            with _held(store.root / COLLECTOR, f"uid {uid}'s chunks are being collected") as beat:
                started = time.time()  # before the references: what is condemned later is younger
                referenced = referenced_by(g.path for g in self.owner_generations(uid))
                return collect_store(store, referenced, started=started, beat=beat, check=beat.check)
        except Busy:
            return None

    # -- copying in ------------------------------------------------------------------------------------
    def store(
        self,
        key: JobKey,
        source: Path,
        manifest: Manifest,
        *,
        heartbeat: _Heartbeat,
        throttle: Throttle | None = None,
        deadline: float | None = None,
        share: Share | None = None,
        codec: Codec | None = None,
    ) -> tuple[VaultGeneration, Sent]:
        """Store a generation (``source``: the snapshot of it) in the job's folder as chunks of its
        owner's store (vault/chunked.py), then publish it. Call holding ``lock(key)``. Every byte
        stored is one the manifest root wrote lists, in a file of its recorded digest; with
        ``share``, a copy whose new chunks would take the owner past it is refused before anything
        is written (VaultOverQuota); with ``deadline`` (monotonic), a copy that passes it stops, and
        nothing of it is published (VaultDeadline; chunks it wrote are the collector's)."""
        name = manifest.generation.name
        folder = self.job_dir(key)
        incoming = folder / f"{INCOMING_PREFIX}{name}.{socket.gethostname()}.{os.getpid()}"
        target = folder / name
        store = ChunkStore(self.root, key.uid)
        codec = codec or Codec()
        written: dict[str, int] = {}  # the chunks this copy put in place

        leases: list[Callable[[], None]] = []  # the copy's lease on its chunks, renewed as it goes

        def tick(nbytes: int = 0) -> None:
            _check_copy_deadline(deadline, name)
            if throttle is not None and nbytes:
                throttle(nbytes)
            heartbeat()
            for renew in leases:
                renew()

        try:
            store.open()
            incoming.mkdir(mode=0o700)  # a copy under way (its index and manifest, written last)
            with opened_generation(source, manifest) as (opened, files), lease(store) as renew:
                leases.append(renew)
                survey = store.survey()  # one walk of the owner's store: what is in it, what it holds
                chunked = cut(opened, files, survey.present, tick=tick, sealed=sealed_chunks(source))
                if share is not None:
                    share.check(self, key, manifest, survey.held, chunked.new_bytes)
                index, sent = write_new(chunked, opened, store, codec, tick=tick, written=written)
                looked = ensure_present(chunked, opened, store, codec, tick=tick)
                sync_file_system(store.root)
                write_index(incoming, index)
                write_manifest(incoming, manifest)
                _check_copy_deadline(deadline, name)
                heartbeat.check()
                check_publish_time(looked)
                _publish(incoming, target)
            written.clear()  # published: its chunks are the generation's
        except OSError as exc:
            raise vault_error(exc, f"cannot copy {name} into {folder}") from None
        except StorageIOError:
            _check_copy_deadline(deadline, name)  # the copy's own time ran out: said as such
            raise
        finally:
            remove_tree(incoming)
            for digest in written:  # a copy that failed: what it wrote goes to the collector, which
                store.condemn(digest)  # removes it unless a copy of another job publishes it meanwhile
        match = GENERATION_NAME.fullmatch(name)
        assert match is not None
        return VaultGeneration(target, int(match.group(1)), match.group(2), key.token), sent

    def missing_chunks(self, key: JobKey, name: str, there: set[str]) -> set[str]:
        """The chunks a chunked generation of the job names that are neither in its owner's store
        (``there``: its listing, with the condemned) nor anywhere: set aside as damaged, or lost."""
        generation = self.job_dir(key) / name
        if not has_index(generation):
            return set()
        return read_index(generation).digests() - there

    def repair(
        self,
        key: JobKey,
        source: Path,
        manifest: Manifest,
        missing: set[str],
        codec: Codec,
        *,
        heartbeat: _Heartbeat,
    ) -> int:
        """Write again, from this node's generation (``source``: its snapshot), the ``missing``
        chunks of the job's vault generation of the same name; each file checked against the manifest
        first, each chunk against its digest. Returns how many were written. Call holding
        ``lock(key)``."""
        store = ChunkStore(self.root, key.uid)
        written = 0
        try:
            with opened_generation(source, manifest) as (opened, files):
                # the lock kept while it reads
                chunked = cut(opened, files, store.listing(), tick=heartbeat, sealed=sealed_chunks(source))
                for digest in sorted(missing & set(chunked.pieces)):
                    store.write(digest, encode_piece(chunked, opened, digest, codec))
                    written += 1
                    heartbeat()
            sync_file_system(store.root)
        except OSError as exc:
            raise vault_error(
                exc, f"cannot repair {manifest.generation.name} in {self.job_dir(key)}"
            ) from None
        return written

    def held_by(self, uid: int) -> dict[str, list[int]]:
        """What the owner's complete copies hold, by job folder (any batch system): held_in each."""
        held: dict[str, list[int]] = {}
        for token in self.job_keys():
            if token.split(".", 2)[1] == str(uid) and (sizes := self.held_in(token)):
                held[token] = sizes
        return held

    def held_in(self, token: str) -> list[int]:
        """The bytes each full copy (the vault's first layout) of one job folder holds, oldest first:
        what its manifest lists (its image and kept files, as copied). A generation stored as chunks
        holds nothing of its own (its chunks are counted with its owner's store); a copy whose
        manifest root cannot vouch for is not charged (it is refused wherever it is read)."""
        sizes = []
        for generation in self.generations(token):
            if has_index(generation.path):
                continue
            try:
                sizes.append(copied_bytes(read_trusted_manifest(generation.path)))
            except (Error, OSError):
                continue
        return sizes

    def full_copies_since_chunks(self, limit: int = 100_000) -> tuple[float | None, list[Path]]:
        """When this vault went to chunks (None: not yet), and the generations of the vault's first
        layout (full copies) written since: a node that still runs an older mom-checkpoint wrote
        them. At most ``limit`` generation folders are looked at."""
        try:
            since = os.lstat(self.root / CHUNKS / SINCE).st_mtime
        except FileNotFoundError:
            return None, []
        found: list[Path] = []
        looked = 0
        for token in self.job_keys():
            for generation in self.generations(token):
                looked += 1
                if looked > limit:
                    return since, found
                with contextlib.suppress(OSError):
                    if not has_index(generation.path) and generation.path.stat().st_mtime > since:
                        found.append(generation.path)
        return since, found

    def owner_generations(self, uid: int) -> list[VaultGeneration]:
        """Every complete generation of one owner, of every job and batch system."""
        return [g for token in owner_tokens(self.job_keys(), uid) for g in self.generations(token)]

    def referencing(self, uid: int, digests: set[str]) -> tuple[list[Path], list[Path]]:
        """The owner's complete generations that reference any of these chunks, and those whose
        index cannot be read (they may too: a damaged index hides nothing of the others)."""
        found: list[Path] = []
        unreadable: list[Path] = []
        for generation in self.owner_generations(uid):
            try:
                if has_index(generation.path) and read_index(generation.path).digests() & digests:
                    found.append(generation.path)
            except Error:
                unreadable.append(generation.path)
        return found, unreadable

    def check_chunked(
        self, generation: Path, manifest: Manifest, progress: Callable[[int], None] | None = None
    ) -> None:
        """``verify --vault`` of a generation stored as chunks: every chunk read back and checked; a
        missing or damaged one (set aside, for the next vault-sync to write again) is named with every
        generation of the owner it breaks (VerificationFailed)."""
        key = JobKey.from_token(generation.parent.name)
        if key is None:
            raise VerificationFailed(f"{generation} is not in a job's folder of the vault")
        store = ChunkStore(self.root, key.uid)
        bad = check_chunks(generation, read_index(generation), manifest, store, progress=progress)
        if bad:
            broken, unreadable = self.referencing(key.uid, set(bad))
            unread = f"; {_named(unreadable)} cannot be read (damaged index)" if unreadable else ""
            raise VerificationFailed(
                f"{generation}: {len(bad)} chunk(s) missing or damaged (first {bad[0]}), set aside; they "
                f"break {len(broken)} generation(s) of uid {key.uid} in the vault: {_named(broken)}{unread} "
                f"(the next vault-sync of a node that still has those bytes writes them again)"
            )

    def size(self) -> int:
        """The vault file system's size, in bytes."""
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            raise VaultUnavailable(f"cannot read the size of the vault {self.root}: {exc.strerror}") from None
        return st.f_blocks * st.f_frsize

    def remove_if_empty(self, key: JobKey) -> None:
        """The job's folder, if nothing is in it (a first copy that was refused leaves no trace)."""
        with contextlib.suppress(OSError):
            os.rmdir(self.job_dir(key))

    def prune(self, key: JobKey, keep: int, holder: _Heartbeat) -> list[Path]:
        """Keep the newest ``keep`` complete generations of the job; call holding ``lock(key)``, after
        a newer one was published (so a removed one is never the newest)."""
        holder.check()
        removed = []
        generations = self.generations(key.token)
        for generation in generations[: max(0, len(generations) - keep)]:
            doomed = generation.path.with_name(
                f"{PRUNING_PREFIX}{generation.name}.{socket.gethostname()}.{os.getpid()}"
            )
            try:
                os.rename(generation.path, doomed)
            except OSError:
                continue
            remove_tree(doomed)
            removed.append(generation.path)
        return removed

    # -- bringing back ---------------------------------------------------------------------------------
    def fetch(self, generation: VaultGeneration, spool: Spool, *, deadline: float | None = None) -> Path:
        """Copy a vault generation into the local spool (``<exec_pid>.<job id>/<name>``, root's) and
        publish it there, each file checked against the manifest as it is copied: from then on it is
        a local generation, restored with every local check. Returns its path."""
        manifest = read_trusted_manifest(generation.path)
        spool.ensure_root()
        job_user = manifest.backend.run_as == "job-user"
        run = spool.open_run(manifest.job.exec_pid, manifest.job.id)
        target = run / generation.name
        if target.is_dir():
            return target  # already here (fetched before, or never lost)
        incoming = run / f"{INCOMING_PREFIX}fetch.{generation.name}.{os.getpid()}"
        # the job user's restorer reads the image (through root's staged links): readable files, in a
        # generation folder only root can enter, as the user's own CRIU would have left them
        file_mode = 0o644 if job_user else 0o600
        try:
            if has_index(generation.path):
                if manifest.key.token != generation.key:  # its chunks are the owner's its folder names
                    raise VerificationFailed(f"{generation.path} holds a checkpoint of another job's key")
                index = read_index(generation.path)
                store = ChunkStore(self.root, manifest.key.uid)
                try:
                    incoming.mkdir(mode=0o700)
                    reassemble(generation.path, index, manifest, store, incoming, file_mode=file_mode,
                               deadline=deadline)  # fmt: skip
                    for folder in sorted(
                        {p.parent for p in incoming.rglob("*") if p.is_file()}, reverse=True
                    ):
                        fsync_dir(folder)
                    write_manifest(incoming, manifest)
                    _publish(incoming, target)
                finally:
                    remove_tree(incoming)
            else:
                publish_copy(
                    generation.path, incoming, target, manifest, deadline=deadline, file_mode=file_mode
                )
        except OSError as exc:
            raise storage_error(exc, f"cannot copy {generation.path} into {run}") from None
        return target


def publish_copy(
    source: Path,
    incoming: Path,
    target: Path,
    manifest: Manifest,
    before_publish: Callable[[], None] | None = None,
    **copying: Any,
) -> None:
    """Copy a generation into the new folder ``incoming`` (copy_generation), write its manifest last,
    and publish it as ``target`` with one rename; on any failure nothing but the incoming folder was
    made, and it is removed. A ``target`` published meanwhile by another copier is kept."""
    try:
        incoming.mkdir(mode=0o700)
        copy_generation(source, incoming, manifest, **copying)
        write_manifest(incoming, manifest)
        if before_publish is not None:
            before_publish()
        _publish(incoming, target)
    except BaseException:
        remove_tree(incoming)
        raise


def _publish(incoming: Path, target: Path) -> None:
    """One rename: from then on the generation is complete. A ``target`` published meanwhile by
    another copier (another node took a stale lock) is kept, and the incoming folder removed."""
    try:
        os.rename(incoming, target)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
            raise
        remove_tree(incoming)
    fsync_dir(target.parent)


def copy_generation(
    source: Path,
    target: Path,
    manifest: Manifest,
    *,
    heartbeat: Callable[[], None] | None = None,
    throttle: Throttle | None = None,
    deadline: float | None = None,
    file_mode: int = 0o600,
    whole_fs_sync: bool = False,
) -> None:
    """Copy every image and kept file the manifest lists from ``source`` to the new folder ``target``:
    each file opened below ``source`` without following a link, exactly its recorded size read,
    its digest taken as it is written and compared with the manifest's, then made durable: each
    file fsync'd, or with ``whole_fs_sync`` the target's file system synced once after all are
    written (a CRIU image is dozens of small files, and on a shared file system each fsync is a
    round trip to the server). Raises VerificationFailed on any difference (nothing is published
    then)."""
    files = manifest.every_file
    source_fd = safefs.open_dir(source)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vault-hash") as hashing:
            copier = _Copier(hashing, heartbeat, throttle, deadline, file_mode, each_fsync=not whole_fs_sync)
            for image_file in files:
                copier.copy(source_fd, target, image_file)
    finally:
        os.close(source_fd)
    if whole_fs_sync:
        sync_file_system(target)
    for folder in sorted({os.path.dirname(f.path) for f in files}, reverse=True):
        if folder:
            fsync_dir(target / folder)
    fsync_dir(target)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    fd = os.open(folder / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        write_all(fd, manifest.to_json().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(folder)


class _Copier(msgspec.Struct, frozen=True):
    hashing: ThreadPoolExecutor  # one thread: a file's digest runs while its next chunk is written
    heartbeat: Callable[[], None] | None
    throttle: Throttle | None
    deadline: float | None
    file_mode: int
    each_fsync: bool = True

    def copy(self, source_fd: int, target: Path, image_file: ImageFile) -> None:
        try:
            fd, st = safefs.open_regular(image_file.path, dir_fd=source_fd)
        except FileNotFoundError:
            raise VerificationFailed(f"{image_file.path} is missing: not copying this generation") from None
        try:
            if st.st_size != image_file.size:
                raise VerificationFailed(
                    f"{image_file.path} has {st.st_size} bytes, {image_file.size} recorded: not copying it"
                )
            destination = target / image_file.path
            destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            out = os.open(  # read-write: what was written is read back (mapped) to be hashed
                destination, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                if self.file_mode != 0o600 and not image_file.path.startswith("kept/"):
                    os.fchmod(out, self.file_mode)
                digest = self._stream(fd, out, image_file)
                if self.each_fsync:
                    os.fsync(out)
                    with contextlib.suppress(OSError):  # the copy is not needed in this node's page cache
                        os.posix_fadvise(out, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(out)
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        if digest != image_file.digest:
            raise VerificationFailed(
                f"{image_file.path} has changed since the checkpoint (checksum mismatch)"
            )

    def _stream(self, fd: int, out: int, image_file: ImageFile) -> str:
        """Exactly the recorded size, copied chunk by chunk by the kernel (sendfile: no copy through
        this process), each chunk then hashed from the destination's own pages (mapped, not copied)
        in the hash thread while the next chunk is copied: the digest of what was written, by the
        algorithm the manifest recorded it with."""
        import mmap

        algorithm = algorithm_of(image_file.digest)
        digest = hasher(algorithm)
        pending: Future[None] | None = None
        done = 0
        with contextlib.suppress(OSError):  # a larger read-ahead window, as cp asks for
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while done < image_file.size:
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise StorageIOError(f"copying {image_file.path} did not finish in time")
            want = min(CHUNK, image_file.size - done)
            if done + want < image_file.size:  # the next chunk is read from disk while this one is written
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, done + want, CHUNK, os.POSIX_FADV_WILLNEED)
            got = 0
            while got < want:  # out's position advances; the source offset is ours
                sent = os.sendfile(out, fd, done + got, want - got)
                if not sent:
                    raise VerificationFailed(f"{image_file.path} ended early: not copying it")
                got += sent
            if pending is not None:
                pending.result()
            # a whole chunk: its offset stays a multiple of CHUNK, as mmap needs
            written = mmap.mmap(out, want, mmap.MAP_SHARED, mmap.PROT_READ, offset=done)
            pending = self.hashing.submit(_hash_and_unmap, digest, written)
            done += want
            if self.throttle is not None:
                self.throttle(want)
            if self.heartbeat is not None:
                self.heartbeat()
        if pending is not None:
            pending.result()
        return finish(algorithm, digest)


def _hash_and_unmap(digest: Hasher, written: Any) -> None:
    try:
        digest.update(written)
    finally:
        written.close()


def snapshot(generation: Generation, manifest: Manifest) -> Path:
    """Hard links of a local generation's files in a root folder of its run (``.vaulting-*``), so a
    prune of the generation while it is copied removes nothing the copy still reads. Each name is
    linked below folders opened without following a link, the name itself not followed either (what
    it links is read later only if it is a regular file of the manifest's size and digest). A name
    that cannot be linked (a file of another file system mounted in a user's image folder) fails
    the copy: it is never read through a mount the user controls."""
    this = f"{os.getpid()}.{start_token(os.getpid())}"
    folder = generation.run_dir / f"{SNAPSHOT_PREFIX}{generation.path.name}.{this}"
    folder.mkdir(mode=0o700)
    source = safefs.open_dir(generation.path)
    try:
        for rel in [f.path for f in manifest.files] + [k.copy for k in manifest.kept] + _sealed(source):
            parent, name = os.path.split(rel)
            (folder / parent).mkdir(mode=0o700, parents=True, exist_ok=True)
            from_fd = safefs.open_dir(parent, dir_fd=source) if parent else os.dup(source)
            try:
                os.link(name, folder / rel, src_dir_fd=from_fd, follow_symlinks=False)
            finally:
                os.close(from_fd)
    except BaseException:
        remove_tree(folder)
        raise
    finally:
        os.close(source)
    return folder


def _sealed(generation_fd: int) -> list[str]:
    """The generation's chunks.index where it has one (a regular file, root's: read_index checks)."""
    try:
        st = os.stat(INDEX, dir_fd=generation_fd, follow_symlinks=False)
    except FileNotFoundError:
        return []
    return [INDEX] if stat.S_ISREG(st.st_mode) else []


def _named(generations: list[Path]) -> str:
    """Up to five generations by job folder and name, and how many more."""
    more = f" and {len(generations) - 5} more" if len(generations) > 5 else ""
    return ", ".join(f"{p.parent.name}/{p.name}" for p in generations[:5]) + more


def sealed_chunks(snapshot: Path) -> Index | None:
    """The chunks the hook recorded when it sealed the generation (vault/seal.py), root's like its
    manifest; None where it has none (an older generation, or a seal that ran out of time) or where
    they cannot be read as such: then the copy hashes the whole image."""
    try:
        return read_index(snapshot) if has_index(snapshot) else None
    except Error:
        return None


def stale_snapshots(run_dir: Path) -> list[Path]:
    """Snapshot folders of copiers that have ended (killed, or the node restarted)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(run_dir):
            if not entry.name.startswith(SNAPSHOT_PREFIX):
                continue
            pid, start = [*entry.name.rsplit(".", 2)[1:], "", ""][:2]
            if not pid.isdigit() or start_token(int(pid)) != start:
                found.append(Path(entry.path))
    return found


def bandwidth_throttle(mib_s: float, sleep: Callable[[float], None] = time.sleep) -> Throttle | None:
    """Sleep as needed to keep the copy at ``mib_s`` MiB/s on average (0: no limit)."""
    if mib_s <= 0:
        return None
    started = time.monotonic()
    sent = 0

    def throttle(nbytes: int) -> None:
        nonlocal sent
        sent += nbytes
        ahead = sent / (mib_s * 1024 * 1024) - (time.monotonic() - started)
        if ahead > 0:
            sleep(ahead)

    return throttle


def bounded(work: Callable[[], object], timeout_s: float, what: str) -> Any:
    """``work()`` run in a child process, its JSON result returned within ``timeout_s``: a vault on a
    mount that hangs never hangs the caller (the child, stuck in the kernel, is killed and left).
    An Error in the child is raised again here, VerificationFailed and Refused as themselves."""
    import select

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing of it may return into the caller's code
        status = 1
        try:
            os.close(read_fd)
            try:
                result: dict[str, object] = {"ok": work()}
            except Error as exc:
                result = {"error": exc.message, "kind": type(exc).__name__}
            write_all(write_fd, json.dumps(result).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            remaining = deadline - time.monotonic()
            ready = select.select([read_fd], [], [], max(0.0, remaining))[0] if remaining > 0 else []
            if not ready:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                raise VaultUnavailable(
                    f"{what}: the vault did not answer within {timeout_s:.0f} s (a hung mount?)"
                )
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    try:
        result = json.loads(b"".join(chunks))
    except ValueError:
        raise VaultUnavailable(f"{what}: the vault's reader ended without an answer") from None
    if "error" in result:
        kinds: dict[str, type[Error]] = {"VerificationFailed": VerificationFailed, "Refused": Refused}
        raise kinds.get(str(result.get("kind")), VaultUnavailable)(str(result["error"]))
    return result["ok"]


def vault_error(exc: OSError, what: str) -> VaultUnavailable:
    reasons = {
        errno.ENOSPC: "the vault is full",
        errno.EDQUOT: "the vault quota is exhausted",
        errno.EROFS: "the vault is read-only",
    }
    reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
    return VaultUnavailable(f"{what}: {reason}")


class _Heartbeat:
    """The lock holder's record (with a nonce of its own); touched at most every HEARTBEAT_S while the
    copy goes on, and read back before anything is published or removed: a holder whose lock was
    cleared as stale while it was stuck finds out, and stops."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = 0.0
        self.nonce = os.urandom(16).hex()

    def write(self) -> None:
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": start_token(os.getpid()),
            "since": time.time(),
            "nonce": self.nonce,
        }
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(info))
        self.last = time.monotonic()

    def ours(self) -> bool:
        return _holder(self.path.parent).get("nonce") == self.nonce

    def check(self) -> None:
        if not self.ours():
            raise Busy(f"the vault lock {self.path.parent} was taken over (this copier was stuck): stopping")

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_S:
            with contextlib.suppress(OSError):
                os.utime(self.path)
            self.last = now


@contextlib.contextmanager
def _held(path: Path, busy: str) -> Iterator[_Heartbeat]:
    """Hold the lock folder ``path`` (mkdir is atomic on every shared file system) or raise Busy
    (``busy`` says what holds it). A holder on this host whose process is gone, or any holder whose
    heartbeat stopped LOCK_STALE_S ago, is cleared first."""
    folder = path.parent
    for _attempt in range(3):
        try:
            os.mkdir(path, 0o700)
            break
        except FileExistsError:
            holder = _holder(path)
            if not _stale(path, holder):
                raise Busy(f"{busy} by {_describe(holder)}") from None
            doomed = folder / f"{PRUNING_PREFIX}{path.name.lstrip('.')}.{socket.gethostname()}.{os.getpid()}"
            try:
                os.rename(path, doomed)
            except OSError:
                continue  # someone else cleared or took it meanwhile
            remove_tree(doomed)
        except OSError as exc:
            raise vault_error(exc, f"cannot lock {folder}") from None
    else:
        raise Busy(f"the lock {path} keeps changing hands")
    beat = _Heartbeat(path / HOLDER)
    try:
        beat.write()
        yield beat
    finally:
        if beat.ours():  # a lock cleared as stale and taken by another holder is theirs now
            with contextlib.suppress(OSError):
                os.unlink(path / HOLDER)
            with contextlib.suppress(OSError):
                os.rmdir(path)


def _holder(lock: Path) -> dict[str, object]:
    text = safefs.read_text(lock / HOLDER, limit=4096)
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _stale(lock: Path, holder: dict[str, object]) -> bool:
    try:
        beat = os.lstat(lock / HOLDER).st_mtime if holder else os.lstat(lock).st_mtime
    except FileNotFoundError:
        return True
    if holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        if isinstance(pid, int) and start_token(pid) != holder.get("start"):
            return True  # this node's copier has ended without unlocking (killed)
    return time.time() - beat > LOCK_STALE_S


def _describe(holder: dict[str, object]) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "a copier starting up"

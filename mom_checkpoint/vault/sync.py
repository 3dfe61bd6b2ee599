"""Copying the newest complete generation of each job into the vault, off the critical path.

Started detached by the hook after each published checkpoint (for that job), and by the timer that
runs ``tick`` (for every job of the node): whatever a failed or killed copy left is done by the next.
One copier per job on a node (the spool's lock ``vault.<key>``) and across nodes (the vault's own).
The copy reads a snapshot of hard links, so a prune of the generation meanwhile takes nothing from it.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Literal

import msgspec
from msgspec import field
from msgspec.structs import asdict

from mom_checkpoint.batch.jobkey import JobKey
from mom_checkpoint.image.layout import Generation, created_epoch
from mom_checkpoint.image.manifest import Manifest
from mom_checkpoint.image.verification import read_trusted_manifest
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import Busy, Error
from mom_checkpoint.platform.log import Logger
from mom_checkpoint.platform.safefs import remove_tree
from mom_checkpoint.spool.locking import job_lock, lock_dir
from mom_checkpoint.spool.storage import RUN_NAME, Spool
from mom_checkpoint.vault.chunks import ChunkStore, Codec
from mom_checkpoint.vault.collect import Collected
from mom_checkpoint.vault.store import (
    Share,
    Vault,
    VaultDeadline,
    VaultOverQuota,
    bandwidth_throttle,
    copied_bytes,
    order,
    snapshot,
    stale_snapshots,
)

Status = Literal["copied", "present", "repaired", "superseded", "busy", "failed"]

SLOWEST_MIB_S = 4.0  # the slowest copy a vault-sync waits for (with a bandwidth limit: half of it)
DEFAULT_SHARE = 4  # without vault_quota_gib, one user's copies may hold 1/4 of the vault's file system


class Copy(msgspec.Struct, frozen=True):
    job_id: str
    key: str
    generation: str
    status: Status
    bytes: int = 0  # the generation's image and kept files
    seconds: float = 0.0
    error: str | None = None
    sent_bytes: int = 0  # written to the vault: its new chunks, compressed
    new_bytes: int = 0  # its new chunks, uncompressed
    deduplicated_bytes: int = 0  # of its bytes, those whose chunks the vault held already

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sync(config: Config, env: Environment, log: Logger, job_id: str | None = None) -> list[Copy]:
    """Copy the job's (or every job's) newest generations into the vault at ``config.vault_dir``."""
    assert config.vault_dir, "the caller checks that a vault is configured"
    lower_priority()
    vault = Vault(config.vault_dir)
    spool = Spool(config.spool_dir)
    vault.check_root(spool.root)
    syncer = _Syncer(vault, spool, config, env, log)
    results = []
    for job in [job_id] if job_id is not None else _job_ids(spool):
        for run_dir in spool.runs_of(job):
            for stale in stale_snapshots(run_dir):
                remove_tree(stale)
        for key, (generation, manifest) in _newest_by_key(spool, job, log).items():
            results.append(syncer.one(key, generation, manifest))
    if config.metrics_file:
        _record_metrics(spool, config, results, syncer.collected, env.clock(), everything=job_id is None,
                        log=log)  # fmt: skip
    return results


def _record_metrics(
    spool: Spool,
    config: Config,
    results: list[Copy],
    collected: list[Collected],
    now: float,
    *,
    everything: bool,
    log: Logger,
) -> None:
    from mom_checkpoint.spool import metrics

    waiting = [now - _made(c.generation) for c in results if c.status in ("failed", "busy")]
    copied = [c for c in results if c.status == "copied"]
    tally = metrics.VaultTally(
        copied=len(copied),
        failed=sum(c.status == "failed" for c in results),
        copied_bytes=sum(c.bytes for c in copied),
        sent_bytes=sum(c.sent_bytes for c in copied),
        new_bytes=sum(c.new_bytes for c in copied),
        deduplicated_bytes=sum(c.deduplicated_bytes for c in copied),
        chunks_collected=sum(c.removed for c in collected),
        collected_bytes=sum(c.removed_bytes for c in collected),
    )
    try:
        metrics.record_vault(
            spool.root, config.metrics_file, tally, pending_s=max([0.0, *waiting]) if everything else None
        )
    except Exception as exc:  # metrics never fail a copy
        log.warning("metrics.failed", error=str(exc))


class _Syncer(msgspec.Struct, frozen=True):
    vault: Vault
    spool: Spool
    config: Config
    env: Environment
    log: Logger
    held: dict[int, dict[str, list[int]]] = field(default_factory=dict)  # Vault.held_by, per owner uid
    collected: list[Collected] = field(default_factory=list)  # this run's collections
    chunks: dict[int, set[str]] = field(default_factory=dict)  # each owner's chunks, listed once a run

    def one(self, key: JobKey, generation: Generation, manifest: Manifest) -> Copy:
        vault, spool, config, env, log = self.vault, self.spool, self.config, self.env, self.log
        keep = config.vault_keep or config.keep
        name = generation.path.name
        if vault.has(key, name):
            return self._present(key, generation, manifest)
        started = env.monotonic()
        try:
            with (
                job_lock(lock_dir(spool.root), f"vault.{key.token}", ["vault-sync", key.job_id], key.job_id),
                vault.lock(key) as heartbeat,
            ):
                if vault.has(key, name):  # another copier finished it while this one waited for nothing
                    return Copy(key.job_id, key.token, name, "present")
                newer = [
                    g
                    for g in vault.generations(key.token)
                    if order(g) > (generation.number, generation.created)
                ]
                if newer:  # the job went on elsewhere (restarted on another node): this copy is history
                    log.info("vault.superseded", job_id=key.job_id, generation=name, newer=newer[-1].name)
                    return Copy(key.job_id, key.token, name, "superseded")
                copying = env.monotonic()
                deadline = copy_deadline(config, manifest, time.monotonic())
                # checked before a byte is written; the owner's other copies read once per run
                if key.uid not in self.held:
                    self.held[key.uid] = vault.held_by(key.uid)
                others = self.held[key.uid]
                share = vault_share(vault, config, keep, others)
                links = snapshot(generation, manifest)
                try:
                    stored, sent = vault.store(
                        key, links, manifest, heartbeat=heartbeat,
                        throttle=bandwidth_throttle(config.vault_bandwidth_mib_s), deadline=deadline,
                        share=share, codec=Codec(config.vault_compression, config.vault_compression_level),
                    )  # fmt: skip
                finally:
                    remove_tree(links)
                copied_s = env.monotonic() - copying
                pruned = vault.prune(key, keep, heartbeat)
                self.held.get(key.uid, {})[key.token] = vault.held_in(key.token)
        except Busy as exc:
            log.info("vault.busy", job_id=key.job_id, generation=name, reason=exc.message)
            return Copy(key.job_id, key.token, name, "busy", error=exc.message)
        except VaultOverQuota as exc:
            vault.remove_if_empty(key)  # a first copy refused leaves not even its job's folder
            log.error("vault.over_quota", job_id=key.job_id, generation=name, uid=key.uid, error=exc.message)
            return Copy(key.job_id, key.token, name, "failed", error=exc.message)
        except (Error, OSError) as exc:
            if isinstance(exc, VaultDeadline):
                vault.remove_if_empty(key)  # a first copy stopped at its deadline leaves no trace
            error = exc.message if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
            log.error("vault.copy_failed", job_id=key.job_id, generation=name, error=error)
            return Copy(key.job_id, key.token, name, "failed", error=error)
        seconds = env.monotonic() - started
        self._collect(key)
        log.info(
            "vault.copied",
            job_id=key.job_id,
            generation=name,
            path=str(stored.path),
            bytes=manifest.total_bytes,
            seconds=round(seconds, 3),  # all of it: locks, the copy, pruning older copies
            copy_s=round(copied_s, 3),  # the copy alone: links, read, hash, write, fsync, publish
            mib_s=round(manifest.total_bytes / max(copied_s, 1e-6) / (1 << 20), 1),
            pruned=[str(p) for p in pruned],
            chunks=sent.chunks,
            new_chunks=sent.new_chunks,
            sent_bytes=sent.sent_bytes,  # what reached the vault
            deduplicated_bytes=sent.deduplicated_bytes,  # what did not need to
            compression=round(sent.ratio, 3),
            sealed=sent.sealed,  # the hook's record of the chunks used: only the new ones were read
        )
        return Copy(key.job_id, key.token, name, "copied", manifest.total_bytes, round(seconds, 3),
                    sent_bytes=sent.sent_bytes, new_bytes=sent.new_bytes,
                    deduplicated_bytes=sent.deduplicated_bytes)  # fmt: skip

    def _present(self, key: JobKey, generation: Generation, manifest: Manifest) -> Copy:
        """In the vault already: whole, or the chunks of it that are gone (set aside as damaged by a
        verify or a restore, or lost) written again from this node's generation."""
        vault, name = self.vault, generation.path.name
        try:
            if key.uid not in self.chunks:
                store = ChunkStore(vault.root, key.uid)
                self.chunks[key.uid] = set(store.listing()) | set(store.condemned())
            missing = vault.missing_chunks(key, name, self.chunks[key.uid])
            if not missing:
                return Copy(key.job_id, key.token, name, "present")
            with (
                job_lock(
                    lock_dir(self.spool.root), f"vault.{key.token}", ["vault-sync", key.job_id], key.job_id
                ),
                vault.lock(key) as heartbeat,
            ):
                links = snapshot(generation, manifest)
                try:
                    codec = Codec(self.config.vault_compression, self.config.vault_compression_level)
                    written = vault.repair(key, links, manifest, missing, codec, heartbeat=heartbeat)
                finally:
                    remove_tree(links)
        except Busy as exc:
            return Copy(key.job_id, key.token, name, "busy", error=exc.message)
        except (Error, OSError) as exc:
            error = exc.message if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
            self.log.error("vault.repair_failed", job_id=key.job_id, generation=name, error=error)
            return Copy(key.job_id, key.token, name, "failed", error=error)
        self.chunks[key.uid] |= missing
        self.log.info(
            "vault.repaired", job_id=key.job_id, generation=name, missing=len(missing), written=written
        )
        return Copy(key.job_id, key.token, name, "repaired")

    def _collect(self, key: JobKey) -> None:
        """The owner's chunks no generation references any more (the job's older copies were just
        pruned): collected when due; a collection that fails is said and fails no copy."""
        try:
            collected = self.vault.collect(key.uid)
        except (Error, OSError) as exc:
            self.log.warning("vault.collect_failed", uid=key.uid, error=str(exc))
            return
        if collected is not None:
            self.collected.append(collected)
            self.log.info("vault.collected", uid=key.uid, **collected.as_dict())


def copy_deadline(config: Config, manifest: Manifest, now: float) -> float:
    """When a copy of the generation must be done (monotonic): timeout_s, plus its bytes (what the
    manifest lists, bounded by the job's memory) at SLOWEST_MIB_S, or at half the bandwidth limit
    when that is lower. A copy past it stops, and what it wrote is removed."""
    rate = SLOWEST_MIB_S
    if config.vault_bandwidth_mib_s > 0:
        rate = min(rate, config.vault_bandwidth_mib_s / 2)
    return now + config.timeout_s + copied_bytes(manifest) / (rate * 2**20)


def vault_share(vault: Vault, config: Config, keep: int, others: dict[str, list[int]] | None = None) -> Share:
    """The most one user's copies may hold in the vault: vault_quota_gib, or without it a quarter of
    the vault's file system (the vault is shared by every node: no user alone fills it)."""
    if config.vault_quota_gib > 0:
        return Share(int(config.vault_quota_gib * 2**30), keep, others=others)
    return Share(
        vault.size() // DEFAULT_SHARE, keep, "a quarter of the vault (vault_quota_gib unset)", others
    )


def _made(name: str) -> float:
    """When a generation was made, from its name (now, for a name no calendar has)."""
    try:
        return created_epoch(name.split("-", 1)[1])
    except (IndexError, ValueError):
        return time.time()


def _newest_by_key(spool: Spool, job_id: str, log: Logger) -> dict[JobKey, tuple[Generation, Manifest]]:
    """The newest complete generation of each key under a job id (a generation root cannot vouch for
    is skipped, and said)."""
    newest: dict[JobKey, tuple[Generation, Manifest]] = {}
    for generation in reversed(spool.job_generations(job_id)):
        try:
            manifest = read_trusted_manifest(generation.path)
        except Error as exc:
            log.warning("vault.generation_skipped", path=str(generation.path), error=exc.message)
            continue
        newest.setdefault(manifest.key, (generation, manifest))
    return newest


def _job_ids(spool: Spool) -> list[str]:
    try:
        names = [e.name for e in os.scandir(spool.root) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    return sorted({m.group(2) for n in names if (m := RUN_NAME.fullmatch(n))})


def lower_priority() -> None:
    """A copier yields the node's CPU and disk to the jobs: nice 10, the idle I/O class."""
    import psutil

    with contextlib.suppress(OSError, psutil.Error):
        current = os.nice(0)
        if current < 10:
            os.nice(10 - current)
        psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)

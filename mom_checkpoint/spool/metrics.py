"""Prometheus metrics in node_exporter's textfile-collector format (``metrics_file`` in the config).

Each hook run is a new process, so the counters live in ``<spool>/.metrics.json``, updated under a
lock; the textfile is rendered from them with prometheus_client and written atomically (temporary
file, then rename), as the textfile collector requires. Metrics never fail a checkpoint.

The textfile's folder is often the exporter's account's, which may swap anything in it (or the folder
itself) for a link at any moment. So root opens that folder once, from "/", without following a link
another account could have made (safefs.open_configured_dir), and then creates, writes, sets the mode
of and renames its file only through that descriptor: nothing is opened or chmodded by path, and a
link under the textfile's name is replaced, never followed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import msgspec

from mom_checkpoint.platform.files import replace_in, replace_private
from mom_checkpoint.platform.safefs import UnsafePath, open_configured_dir
from mom_checkpoint.spool.locking import lock_dir

STATE = ".metrics.json"


class Attempt(msgspec.Struct, frozen=True):
    backend: str
    ok: bool
    reason: str  # "ok" or the exit status name, e.g. "checkpointer_failed"
    duration_s: float
    frozen_s: float | None = None
    bytes: int = 0


def record(spool_root: Path, metrics_file: str, attempt: Attempt, now: float) -> None:
    with filelock.FileLock(str(lock_dir(spool_root) / "metrics.lock"), timeout=10, mode=0o600):
        state = _load(spool_root / STATE)
        per = state.setdefault("backends", {}).setdefault(attempt.backend, {})
        if attempt.ok:
            per["checkpoints"] = per.get("checkpoints", 0) + 1
            per["last_duration_s"] = attempt.duration_s
            per["last_frozen_s"] = attempt.frozen_s
            per["last_bytes"] = attempt.bytes
            per["last_success"] = now
        else:
            failures = per.setdefault("failures", {})
            failures[attempt.reason] = failures.get(attempt.reason, 0) + 1
        replace_private(spool_root / STATE, json.dumps(state))
        write(metrics_file, state, _spool_bytes(spool_root))


class VaultTally(msgspec.Struct, frozen=True):
    """One vault-sync run's copies and collections, added to the node's counters."""

    copied: int = 0
    failed: int = 0
    copied_bytes: int = 0  # the generations' image and kept files
    sent_bytes: int = 0  # written to the vault: the new chunks, compressed
    new_bytes: int = 0  # the new chunks, uncompressed
    deduplicated_bytes: int = 0  # of the generations' bytes, those whose chunks were there already
    chunks_collected: int = 0  # removed by the collector
    collected_bytes: int = 0


COUNTED = ("copied", "failed", "copied_bytes", "sent_bytes", "new_bytes", "deduplicated_bytes",
           "chunks_collected", "collected_bytes")  # fmt: skip
_STATE_KEYS = {"copied": "copies", "failed": "failures", "copied_bytes": "bytes"}  # as first recorded


def record_vault(spool_root: Path, metrics_file: str, tally: VaultTally, *, pending_s: float | None) -> None:
    """A vault-sync's copies and collections added to the counters; ``pending_s``: how long the
    newest generation of a job that is not yet in the vault has waited (0: every one is there; None:
    not known, a sync of one job)."""
    with filelock.FileLock(str(lock_dir(spool_root) / "metrics.lock"), timeout=10, mode=0o600):
        state = _load(spool_root / STATE)
        vault = state.setdefault("vault", {})
        for name in COUNTED:
            key = _STATE_KEYS.get(name, name)
            vault[key] = vault.get(key, 0) + getattr(tally, name)
        if pending_s is not None:
            vault["pending_s"] = pending_s
        replace_private(spool_root / STATE, json.dumps(state))
        write(metrics_file, state, _spool_bytes(spool_root))


def write(path: str, state: dict[str, Any], spool_bytes: int) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

    class Collector:
        def collect(self) -> Iterator[Metric]:
            done = CounterMetricFamily(
                "mom_checkpoint_checkpoints", "Complete checkpoints on this node", labels=["backend"]
            )
            failed = CounterMetricFamily(
                "mom_checkpoint_failures",
                "Failed checkpoints on this node, by reason",
                labels=["backend", "reason"],
            )
            duration = GaugeMetricFamily(
                "mom_checkpoint_last_duration_seconds",
                "Wall time of the last complete checkpoint",
                labels=["backend"],
            )
            frozen = GaugeMetricFamily(
                "mom_checkpoint_last_frozen_seconds",
                "How long the job was stopped in the last complete checkpoint (checkpointer's figure)",
                labels=["backend"],
            )
            size = GaugeMetricFamily(
                "mom_checkpoint_last_bytes", "Image size of the last complete checkpoint", labels=["backend"]
            )
            success = GaugeMetricFamily(
                "mom_checkpoint_last_success_timestamp_seconds",
                "When the last checkpoint completed",
                labels=["backend"],
            )
            for backend, per in sorted(state.get("backends", {}).items()):
                done.add_metric([backend], per.get("checkpoints", 0))
                for reason, count in sorted(per.get("failures", {}).items()):
                    failed.add_metric([backend, reason], count)
                if "last_success" in per:
                    duration.add_metric([backend], per["last_duration_s"])
                    if per.get("last_frozen_s") is not None:
                        frozen.add_metric([backend], per["last_frozen_s"])
                    size.add_metric([backend], per["last_bytes"])
                    success.add_metric([backend], per["last_success"])
            yield from (done, failed, duration, frozen, size, success)
            yield from _vault_metrics(state.get("vault"))
            yield GaugeMetricFamily(
                "mom_checkpoint_spool_bytes", "Bytes in the checkpoint spool", value=spool_bytes
            )

    registry = CollectorRegistry()
    registry.register(Collector())
    replace_file(path, generate_latest(registry), 0o644)  # node_exporter reads it; it holds counts only


def replace_file(path: str, data: bytes, mode: int) -> None:
    """``path`` atomically replaced by a new root file holding ``data`` with ``mode``: created (never
    through a link), written, synced and renamed into place through a descriptor of its folder, whoever
    owns that folder. A link or file already under the name is replaced, not followed or opened."""
    folder, name = os.path.split(path)
    if name in ("", ".", ".."):
        raise UnsafePath(f"{path!r} names no file: refusing")
    dir_fd = open_configured_dir(folder or "/")
    try:
        replace_in(dir_fd, name, data, mode=mode)
    finally:
        os.close(dir_fd)


def _vault_metrics(vault: dict[str, Any] | None) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if not isinstance(vault, dict):
        return
    yield CounterMetricFamily(
        "mom_checkpoint_vault_copies",
        "Generations copied into the vault by this node",
        value=vault.get("copies", 0),
    )
    yield CounterMetricFamily(
        "mom_checkpoint_vault_failures", "Copies into the vault that failed (retried by the next sync)",
        value=vault.get("failures", 0),
    )  # fmt: skip
    yield CounterMetricFamily(
        "mom_checkpoint_vault_copied_bytes",
        "Bytes copied into the vault by this node",
        value=vault.get("bytes", 0),
    )
    for name, text in (
        ("sent_bytes", "Bytes written to the vault by this node: new chunks, compressed"),
        ("new_bytes", "Bytes of the new chunks this node wrote to the vault, before compression"),
        ("deduplicated_bytes", "Bytes of copied generations whose chunks were in the vault already"),
        ("chunks_collected", "Chunks no generation referenced, removed from the vault by this node"),
        ("collected_bytes", "Bytes of the chunks this node's collections removed from the vault"),
    ):
        yield CounterMetricFamily(f"mom_checkpoint_vault_{name}", text, value=vault.get(name, 0))
    new, sent = vault.get("new_bytes", 0), vault.get("sent_bytes", 0)
    yield GaugeMetricFamily(
        "mom_checkpoint_vault_compression_ratio",
        "Bytes of the new chunks over the bytes written for them, over every sync of this node (1: none)",
        value=new / sent if sent else 1.0,
    )
    yield GaugeMetricFamily(
        "mom_checkpoint_vault_pending_seconds",
        "Seconds since the newest generation of a job on this node that is not yet in the vault was made",
        value=vault.get("pending_s", 0.0),
    )


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _spool_bytes(root: Path) -> int:
    from mom_checkpoint.platform.safefs import tree_bytes

    return tree_bytes(root)

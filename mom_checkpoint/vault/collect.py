"""The collector: an owner's chunks that no complete generation of theirs references any more leave
the vault, in two steps at least CONDEMNED_S apart.

1. condemn: a chunk no complete generation of the owner references is moved to ``.condemned/`` (one
   rename), stamped with the time;
2. remove: a condemned chunk that is still referenced by none, condemned CONDEMNED_S ago or more, is
   removed; one referenced again is put back.

So no complete generation ever references a removed chunk, whatever runs meanwhile: copies of any of
the owner's jobs on any node, another node's collector, kill -9 of any of them at any moment. A copy
looks at the store once more right before it publishes (vault/chunked.ensure_present): what it finds
condemned it puts back, what is gone it writes again, and it publishes within PUBLISH_WITHIN_S of
that look or not at all. For a chunk of that copy to be removed, it must have been condemned after
that look and stayed condemned CONDEMNED_S; CONDEMNED_S is longer than PUBLISH_WITHIN_S plus the
time a network file system's listing may lag behind (NFS caches a folder's entries up to 60 s), so
by then the collector's listing shows the new generation, and the chunk goes back instead. A reader
that does not find a chunk in its place looks among the condemned.

One collector of an owner at a time (``.collect``: a lock like a job's copier lock). A collector
that cannot read every generation of the owner (a damaged index, a vault that fails) removes and
condemns nothing: it never decides from half the references.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

from mom_checkpoint.batch.jobkey import JobKey
from mom_checkpoint.vault import index as vault_index
from mom_checkpoint.vault.chunked import PUBLISH_WITHIN_S
from mom_checkpoint.vault.chunks import ChunkStore

CONDEMNED_S = 3600.0  # a condemned chunk's wait before it is removed
COLLECT_EVERY_S = 600.0  # vault-sync collects an owner's chunks at most this often
COLLECTED = ".collected"  # in the owner's store: its mtime is when a collection last finished
COLLECTOR = ".collect"  # in the owner's store: the collector's lock
assert CONDEMNED_S > PUBLISH_WITHIN_S + 2 * 60, "a copy's last look must stay valid while condemned"


class Plan(msgspec.Struct, frozen=True):
    """What a collection does, and why (each a list of digests)."""

    condemn: list[str]  # in place, referenced by no complete generation
    remove: list[str]  # condemned CONDEMNED_S ago or more, still referenced by none
    restore: list[str]  # condemned, but a complete generation references it (again)
    waiting: list[str]  # condemned less than CONDEMNED_S ago, referenced by none: removed later


class Collected(msgspec.Struct, frozen=True):
    condemned: int
    removed: int
    removed_bytes: int
    restored: int

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in self.__struct_fields__}


def plan(referenced: set[str], present: Iterable[str], condemned: dict[str, float], now: float) -> Plan:
    """The collection of one owner's store: ``referenced`` by their complete generations, ``present``
    in place, ``condemned`` with the time each was condemned."""
    return Plan(
        condemn=sorted(d for d in present if d not in referenced),
        remove=sorted(
            d for d, when in condemned.items() if d not in referenced and now - when >= CONDEMNED_S
        ),
        restore=sorted(d for d in condemned if d in referenced),
        waiting=sorted(
            d for d, when in condemned.items() if d not in referenced and now - when < CONDEMNED_S
        ),
    )


def referenced_by(generations: Iterable[Path]) -> set[str]:
    """Every chunk these complete generations (of one owner) reference; those of the first layout
    (full copies) reference none. Raises when one cannot be read: nothing is decided from half the
    references."""
    found: set[str] = set()
    for generation in generations:
        if vault_index.has_index(generation):
            found |= vault_index.read(generation).digests()
    return found


def collect(store: ChunkStore, referenced: set[str], now: float | None = None) -> Collected:
    """Carry out the plan for ``store`` (call holding its collector lock)."""
    now = time.time() if now is None else now
    condemned = store.condemned()
    todo = plan(referenced, store.listing(), condemned, now)
    for digest in todo.restore:
        store.resurrect(digest)
    removed_bytes = 0
    for digest in todo.remove:
        with contextlib.suppress(FileNotFoundError):
            removed_bytes += os.lstat(store.root / ".condemned" / digest).st_size
        store.remove_condemned(digest)
    for digest in todo.condemn:
        store.condemn(digest, now)
    stamp = store.root / COLLECTED
    stamp.touch(mode=0o600)
    os.utime(stamp, (now, now))
    return Collected(len(todo.condemn), len(todo.remove), removed_bytes, len(todo.restore))


def due(store: ChunkStore, now: float | None = None) -> bool:
    """Whether the owner's store was last collected COLLECT_EVERY_S ago or more (or never)."""
    now = time.time() if now is None else now
    try:
        return now - os.lstat(store.root / COLLECTED).st_mtime >= COLLECT_EVERY_S
    except FileNotFoundError:
        return True


def owner_tokens(tokens: Iterable[str], uid: int) -> list[str]:
    """The job folders of one owner, of every batch system."""
    return [t for t in tokens if (key := JobKey.from_token(t)) is not None and key.uid == uid]

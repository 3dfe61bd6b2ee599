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
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import msgspec

from mom_checkpoint.batch.jobkey import JobKey
from mom_checkpoint.platform.errors import StorageIOError
from mom_checkpoint.processes.procfs import start_token
from mom_checkpoint.vault import index as vault_index
from mom_checkpoint.vault.chunked import PUBLISH_WITHIN_S
from mom_checkpoint.vault.chunks import CONDEMNED, ChunkStore, entries

CONDEMNED_S = 3600.0  # a condemned chunk's wait before it is removed
COLLECT_EVERY_S = 600.0  # vault-sync collects an owner's chunks at most this often
COLLECTED = ".collected"  # in the owner's store: its mtime is when a collection last finished
COLLECTOR = ".collect"  # in the owner's store: the collector's lock
COLLECT_WITHIN_S = 900.0  # a collection that took longer to get to its removals removes nothing
CLOCK_MARGIN_S = 120.0  # nodes' clocks may differ by this much
assert CONDEMNED_S > PUBLISH_WITHIN_S + COLLECT_WITHIN_S + 2 * 60, "a last look must outlast a collection"


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


def plan(
    referenced: set[str],
    present: dict[str, float],
    condemned: dict[str, float],
    now: float,
    fresh_since: float | None = None,
) -> Plan:
    """The collection of one owner's store: ``referenced`` by their complete generations, ``present``
    in place and ``condemned`` (each with its time: written, or condemned), ``now`` when the
    references began to be read; chunks written since ``fresh_since`` (a copy still running began
    then) are left in place: that copy's generation will reference them."""
    unreferenced = [d for d in present if d not in referenced]
    return Plan(
        condemn=sorted(d for d in unreferenced if fresh_since is None or present[d] < fresh_since),
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
        elif not vault_index.is_full_copy(generation):
            raise StorageIOError(f"{generation} is neither chunks nor a full copy: collecting nothing")
    return found


def collect(
    store: ChunkStore,
    referenced: set[str],
    *,
    started: float,
    beat: Callable[[], None] = lambda: None,
    check: Callable[[], None] = lambda: None,
) -> Collected:
    """Carry out the plan for ``store`` (call holding its collector lock, ``started``: the time,
    taken before the references were read). ``beat`` keeps the lock alive; ``check`` raises when it
    was lost (to a collector on another node that found this one stalled), before anything is
    removed: nothing is removed after COLLECT_WITHIN_S either."""
    condemned = store.condemned()
    beat()
    todo = plan(referenced, store.times(), condemned, started, fresh_since(store))
    beat()
    for digest in todo.restore:
        store.resurrect(digest)
    check()
    removed_bytes = 0
    if time.time() - started < COLLECT_WITHIN_S:
        for digest in todo.remove:
            with contextlib.suppress(FileNotFoundError):
                removed_bytes += os.lstat(store.root / CONDEMNED / digest).st_size
            store.remove_condemned(digest)
            beat()
    for digest in todo.condemn:
        store.condemn(digest)  # stamped with this node's clock, before it is moved
        beat()
    store.remove_leftovers(started)
    stamp = store.root / COLLECTED
    stamp.touch(mode=0o600)
    return Collected(len(todo.condemn), len(todo.remove), removed_bytes, len(todo.restore))


# -- leases: a copy's chunks are its generation's before it is published ----------------------------
LEASES = ".copies"  # in the owner's store: one file a running copy, its mtime the copy's heartbeat
LEASE_STALE_S = 300.0  # a lease not renewed for this long is a killed copy's


@contextlib.contextmanager
def lease(store: ChunkStore) -> Iterator[Callable[[], None]]:
    """A running copy's lease on the chunks it writes: while it is renewed (call what this yields),
    no collector condemns a chunk written since the copy began."""
    folder = store.root / LEASES
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    path = folder / f"{socket.gethostname()}.{os.getpid()}.{os.urandom(6).hex()}"
    began = time.time()
    holder = {
        "began": began,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": start_token(os.getpid()),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(holder))
    last = [time.monotonic()]

    def renew() -> None:
        if time.monotonic() - last[0] >= LEASE_STALE_S / 10:
            with contextlib.suppress(OSError):
                os.utime(path)
            last[0] = time.monotonic()

    try:
        yield renew
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def fresh_since(store: ChunkStore, now: float | None = None) -> float | None:
    """When the oldest running copy of the owner began (less a margin for clocks), or None; a lease
    not renewed for LEASE_STALE_S is a killed copy's, and removed."""
    now = time.time() if now is None else now
    oldest: float | None = None
    for entry in entries(store.root / LEASES):
        try:
            holder = json.loads(Path(entry.path).read_text()[:4096])
            began = float(holder["began"])
            ended = (
                holder["host"] == socket.gethostname() and start_token(int(holder["pid"])) != holder["start"]
            )
            if ended or now - entry.stat(follow_symlinks=False).st_mtime > LEASE_STALE_S:
                os.unlink(entry.path)  # a killed copy's (on this node: its process is gone)
                continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        oldest = began if oldest is None else min(oldest, began)
    return None if oldest is None else oldest - CLOCK_MARGIN_S


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

"""The vault's bounds (issue 25 #3): a copy stops at its deadline and removes what it wrote, and one
owner's copies never pass their share of the shared vault (vault_quota_gib)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec
import pytest

from mom_checkpoint.batch.jobkey import JobKey
from mom_checkpoint.image.manifest import Manifest
from mom_checkpoint.vault.chunks import ChunkStore
from mom_checkpoint.vault.store import Share, Vault, VaultDeadline, VaultOverQuota
from tests.unit.vault.test_vault import KEY, _generation

KIB = 1 << 10


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    root = tmp_path / "vault"
    root.mkdir(mode=0o700)
    return Vault(root)


def _store(
    vault: Vault,
    key: JobKey,
    source: Path,
    record: Manifest,
    *,
    deadline: float | None = None,
    share: Share | None = None,
) -> None:
    with vault.lock(key) as beat:
        vault.store(key, source, record, heartbeat=beat, deadline=deadline, share=share)


def test_a_copy_past_its_deadline_stops_and_leaves_nothing(vault: Vault, tmp_path: Path) -> None:
    source, record = _generation(tmp_path, 1, b"p" * (9 << 20))  # more than one chunk
    with pytest.raises(VaultDeadline, match=r"did not finish by its deadline.*partial copy removed"):
        _store(vault, KEY, source, record, deadline=time.monotonic() - 1)
    assert list(vault.job_dir(KEY).iterdir()) == []
    _store(vault, KEY, source, record, deadline=time.monotonic() + 600)
    assert [g.number for g in vault.generations(KEY.token)] == [1]


def test_an_owners_copies_stop_at_their_share_and_the_refused_one_writes_nothing(
    vault: Vault, tmp_path: Path
) -> None:
    """The share counts the owner's chunk files (each once, whichever generations hold it) and the
    new chunks a copy would add: a copy that would pass it writes nothing; one whose bytes are all
    in the store already adds nothing and goes in."""
    share = Share(limit=250 * KIB, keep=2)
    first, second, third = (os.urandom(100 * KIB) for _ in range(3))  # incompressible, distinct
    for number, data in ((1, first), (2, second)):
        source, record = _generation(tmp_path / str(number), number, data)
        _store(vault, KEY, source, record, share=share)
    mine = ChunkStore(vault.root, KEY.uid)
    held = mine.listing()
    assert len(held) == 2 and 200 * KIB < sum(held.values()) < 201 * KIB
    other_job = msgspec.structs.replace(KEY, job_id="43.head")
    source, record = _generation(tmp_path / "3", 3, third)
    with pytest.raises(VaultOverQuota, match=r"vault_quota_gib .*not copying it"):
        _store(vault, other_job, source, record, share=share)
    assert list(vault.job_dir(other_job).iterdir()) == [] and mine.listing() == held
    # the same bytes in another job of the owner: stored once, nothing new to count
    source, record = _generation(tmp_path / "4", 3, first)
    _store(vault, other_job, source, record, share=share)
    assert mine.listing() == held and [g.number for g in vault.generations(other_job.token)] == [3]
    # another owner's copies are theirs to count, and never share a chunk with this one's
    theirs = msgspec.structs.replace(KEY, uid=KEY.uid + 1)
    _store(vault, theirs, source, record, share=share)
    stores = sorted(p for p in (vault.root / ".chunks").iterdir() if p.is_dir())
    assert stores == sorted([mine.root, ChunkStore(vault.root, theirs.uid).root])
    assert len(ChunkStore(vault.root, theirs.uid).listing()) == 1  # their own copy of the same bytes
    assert vault.held_by(KEY.uid) == {}  # no full copy of the vault's first layout

"""The vault's bounds (issue 25 #3): a copy stops at its deadline and removes what it wrote, and one
owner's copies never pass their share of the shared vault (vault_quota_gib)."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest

from mom_checkpoint.batch.jobkey import JobKey
from mom_checkpoint.image.manifest import Manifest
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
    share = Share(limit=250 * KIB, keep=2)
    for number in (1, 2):
        source, record = _generation(tmp_path / str(number), number, b"p" * (100 * KIB))
        _store(vault, KEY, source, record, share=share)
    other_job = msgspec.structs.replace(KEY, job_id="43.head")
    source, record = _generation(tmp_path / "3", 3, b"p" * (100 * KIB))
    with pytest.raises(VaultOverQuota, match=r"vault_quota_gib .*not copying it"):
        _store(vault, other_job, source, record, share=share)
    assert list(vault.job_dir(other_job).iterdir()) == []
    # the same job's next copy replaces its oldest (keep = 2): within the share
    _store(vault, KEY, source, record, share=share)
    with vault.lock(KEY) as beat:
        vault.prune(KEY, 2, beat)
    assert [g.number for g in vault.generations(KEY.token)] == [2, 3]
    # another owner's copies are theirs to count
    theirs = msgspec.structs.replace(KEY, uid=KEY.uid + 1)
    _store(vault, theirs, source, record, share=share)
    assert vault.held_by(KEY.uid) == {KEY.token: [100 * KIB, 100 * KIB]}
    assert vault.held_by(theirs.uid) == {theirs.token: [100 * KIB]}

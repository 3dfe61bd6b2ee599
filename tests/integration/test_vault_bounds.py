"""vault-sync's bounds on the shared vault (issue 25 #3): one user's copies stop at their share
(vault_quota_gib) with one line in the log and nothing written, another user's go on; a copy that
passes its deadline stops and leaves nothing in the vault, and the next sync makes it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mom_checkpoint.platform.config import ENV_VAR, load
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.log import make_logger
from mom_checkpoint.vault import sync as vault_sync
from mom_checkpoint.vault.chunks import ChunkStore
from tests.helpers import Site, User, call_hook
from tests.integration.test_vault import in_vault, psnc, sync, vault
from tests.reliability.security import _root

__all__ = ["vault"]  # a fixture, used by name


def _checkpointed(site: Site, job_id: str, image_bytes: int, user: User | None = None) -> None:
    """A job checkpointed with no vault reachable (the hook's own copy fails at once): the test's
    sync is the only copier."""
    psnc(site, image_bytes=image_bytes, vault_dir=str(site.base / "off"))
    job = site.start_job(job_id, user=user)
    args = site.torque_args(job)
    if user is not None:  # the job's own CHECKPOINT_DIR, as pbs_mom makes it
        os.chown(Path(str(args[4])), user.uid, user.gid)
    result = call_hook(args, site.config)
    assert result.returncode == 0, result.stderr


def _vault_leftovers(vault: Path) -> list[str]:
    return sorted(str(p.relative_to(vault)) for p in vault.rglob("*"))


def test_one_users_copies_stop_at_their_share_of_the_vault(site: Site, vault: Path) -> None:
    image = 4 << 20
    for job_id in ("811.head", "812.head", "813.head"):
        _checkpointed(site, job_id, image)
    # the stand-in's images (random hex) would compress; stored as they are, each copy holds 4 MiB
    psnc(site, image_bytes=image, vault_dir=str(vault), vault_quota_gib=0.01, vault_compression="none")
    before = _vault_leftovers(vault)
    done = sync(site)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "vault_quota_gib" in done.stdout, done.stdout
    assert in_vault(vault, "811.head", site.user.uid) and in_vault(vault, "812.head", site.user.uid)
    assert not (vault / f"torque.{site.user.uid}.813.head").exists(), _vault_leftovers(vault)
    assert not [p for p in _vault_leftovers(vault) if ".incoming-" in p or ".vaulting-" in p]
    assert before == []
    refused = [e for e in site.log_events() if e["event"] == "vault.over_quota"]
    assert len(refused) == 1 and refused[0]["job_id"] == "813.head", refused
    assert not [e for e in site.log_events() if e["event"] == "vault.copy_failed"]
    held = sum(p.stat().st_size for p in (vault / ".chunks" / str(site.user.uid)).rglob("*") if p.is_file())
    assert 8 << 20 < held <= 0.01 * 2**30, held  # the two copies' chunks, counted once each
    # another user's copy is not charged to them
    _checkpointed(site, "814.head", image, user=_root())
    psnc(site, image_bytes=image, vault_dir=str(vault), vault_quota_gib=0.01, vault_compression="none")
    done = sync(site, "--job", "814.head")
    assert done.returncode == 0, done.stdout + done.stderr
    assert in_vault(vault, "814.head", 0)


def test_without_vault_quota_gib_one_user_may_hold_a_quarter_of_the_vault(site: Site, vault: Path) -> None:
    for job_id in ("821.head", "822.head", "823.head"):  # 3 x 60 MiB of a 512 MiB vault
        _checkpointed(site, job_id, 60 << 20)
    psnc(site, image_bytes=60 << 20, vault_dir=str(vault), vault_compression="none")
    done = sync(site)
    assert done.returncode == 1 and "vault_quota_gib" in done.stdout, done.stdout + done.stderr
    copied = [j for j in ("821.head", "822.head", "823.head") if in_vault(vault, j, site.user.uid)]
    assert len(copied) == 2, copied


def test_a_copy_past_its_deadline_leaves_nothing_in_the_vault(
    site: Site, vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _checkpointed(site, "831.head", 24 << 20)
    psnc(site, image_bytes=24 << 20, vault_dir=str(vault), vault_bandwidth_mib_s=16)
    config = load({ENV_VAR: str(site.config)})
    log = make_logger(config.log_file, program="mom-checkpoint", command="vault-sync")
    # 16 MiB/s: the first 4 MiB chunk alone takes 0.25 s, past a deadline 0.1 s away
    monkeypatch.setattr(vault_sync, "copy_deadline", lambda config, manifest, now: now + 0.1)
    monkeypatch.setattr(vault_sync, "lower_priority", lambda: None)
    [copy] = vault_sync.sync(config, Environment(), log, job_id="831.head")
    assert copy.status == "failed" and "deadline" in str(copy.error), copy
    # no generation, nothing being written, and no chunk: its chunks were still under temporary
    # names (they are put in place only once all are written and synced), and removed
    left = [p for p in _vault_leftovers(vault) if not p.startswith(".chunks")]
    assert left in ([], [f"torque.{site.user.uid}.831.head"]), left
    assert not (vault / f"torque.{site.user.uid}.831.head").exists() or not any(
        (vault / f"torque.{site.user.uid}.831.head").iterdir()
    )
    chunk_files = [p for p in (vault / ".chunks").rglob("*") if p.is_file() and p.name != "SINCE"]
    assert chunk_files == [] and ChunkStore(vault, site.user.uid).listing() == {}, chunk_files
    [failed] = [e for e in site.log_events() if e["event"] == "vault.copy_failed"]
    assert "partial copy removed" in failed["error"], failed
    monkeypatch.undo()
    done = sync(site, "--job", "831.head")
    assert done.returncode == 0, done.stdout + done.stderr
    assert in_vault(vault, "831.head", site.user.uid)

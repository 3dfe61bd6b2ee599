"""The vault's own rules, without a checkpointer: the copier's lock across nodes, publication only of
what verifies, retention only behind a newer copy, the bandwidth limit."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from mom_checkpoint.batch.jobkey import JobKey
from mom_checkpoint.image.hashing import ImageFile
from mom_checkpoint.image.manifest import GenerationInfo, Manifest
from mom_checkpoint.platform.errors import Busy, VerificationFailed
from mom_checkpoint.vault import store as vault_module
from mom_checkpoint.vault.store import Vault, bandwidth_throttle
from tests.helpers import digest_of
from tests.torque import manifest as make_manifest

KEY = JobKey("torque", 1000, "42.head")


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    root = tmp_path / "vault"
    root.mkdir(mode=0o700)
    return Vault(root)


def _generation(tmp_path: Path, number: int, data: bytes = b"pages" * 1000) -> tuple[Path, Manifest]:
    name = f"{number:06d}-20261130T10000{number}Z"
    source = tmp_path / "spool" / name
    (source / "image").mkdir(parents=True)
    (source / "image" / "pages-1.img").write_bytes(data)
    record = make_manifest("42.head", number, name, 4711, 1.0)
    files = [ImageFile("image/pages-1.img", len(data), digest_of(data))]
    record = msgspec.structs.replace(
        record, files=files, total_bytes=len(data), generation=GenerationInfo(number, name)
    )
    return source, record


def test_a_second_copier_of_a_job_is_told_who_holds_it(vault: Vault) -> None:
    with (
        vault.lock(KEY),
        pytest.raises(Busy, match=f"pid {os.getpid()} on {socket.gethostname()}"),
        vault.lock(KEY),
    ):
        pass
    with vault.lock(KEY):  # released: free again
        pass


def test_a_lock_left_by_a_killed_copier_on_this_node_is_cleared_with_its_leftovers(vault: Vault) -> None:
    folder = vault.open_job(KEY)
    (folder / ".lock").mkdir()
    (folder / ".lock" / "holder.json").write_text(
        json.dumps({"host": socket.gethostname(), "pid": 999999999, "start": "1", "since": time.time()})
    )
    (folder / ".incoming-000001-x.node.1" / "image").mkdir(parents=True)
    with vault.lock(KEY):
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]


def test_another_nodes_lock_holds_while_its_heart_beats_and_not_after(vault: Vault) -> None:
    folder = vault.open_job(KEY)
    (folder / ".lock").mkdir()
    holder = folder / ".lock" / "holder.json"
    holder.write_text(json.dumps({"host": "node-b", "pid": 1, "start": "1", "since": time.time()}))
    with pytest.raises(Busy, match="pid 1 on node-b"), vault.lock(KEY):
        pass
    old = time.time() - vault_module.LOCK_STALE_S - 1
    os.utime(holder, (old, old))
    with vault.lock(KEY):
        pass


def test_only_a_copy_that_verifies_is_published(vault: Vault, tmp_path: Path) -> None:
    source, record = _generation(tmp_path, 1)
    (source / "image" / "pages-1.img").write_bytes(b"changed" * 1000)  # not what the manifest says
    with vault.lock(KEY) as beat, pytest.raises(VerificationFailed, match=r"pages-1\.img has"):
        vault.store(KEY, source, record, heartbeat=beat)
    assert [p.name for p in vault.job_dir(KEY).iterdir()] == []
    source, record = _generation(tmp_path / "again", 1)
    with vault.lock(KEY) as beat:
        stored, sent = vault.store(KEY, source, record, heartbeat=beat)
    assert [g.name for g in vault.generations(KEY.token)] == [stored.name]
    # the generation holds its manifest and its index; its bytes are its owner's chunks
    assert sorted(p.name for p in stored.path.iterdir()) == ["chunks.index", "manifest.json"]
    assert (sent.chunks, sent.new_chunks, sent.image_bytes) == (1, 1, 5000) and sent.sent_bytes < 5000
    assert json.loads((stored.path / "manifest.json").read_text())["generation"]["number"] == 1
    every = [stored.path, *stored.path.rglob("*"), *(vault.root / ".chunks").rglob("*")]
    assert all(os.stat(p).st_mode & 0o077 == 0 and os.stat(p).st_uid == 0 for p in every)


def test_retention_keeps_the_newest_and_never_the_only_copy(vault: Vault, tmp_path: Path) -> None:
    for number in (1, 2, 3):
        source, record = _generation(tmp_path / str(number), number)
        with vault.lock(KEY) as beat:
            vault.store(KEY, source, record, heartbeat=beat)
            vault.prune(KEY, 2, beat)
    assert [g.number for g in vault.generations(KEY.token)] == [2, 3]
    with vault.lock(KEY) as beat:
        assert vault.prune(KEY, 1, beat) == [vault.job_dir(KEY) / "000002-20261130T100002Z"]
    assert [g.number for g in vault.generations(KEY.token)] == [3]


def test_a_vault_that_is_not_there_is_never_created(tmp_path: Path) -> None:
    missing = Vault(tmp_path / "not-mounted")
    with pytest.raises(vault_module.VaultUnavailable, match="does not exist"):
        missing.check_root()
    assert not (tmp_path / "not-mounted").exists()
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "open").chmod(0o755)
    with pytest.raises(Exception, match="more open than 700"):
        Vault(tmp_path / "open").check_root()


def test_the_bandwidth_limit_sleeps_for_what_runs_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]  # the copy's clock, faked: what was slept is exactly what ran ahead
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(vault_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    throttle = bandwidth_throttle(10, sleep=sleep)
    assert throttle is not None
    throttle(10 << 20)  # 1 s worth at 10 MiB/s, sent at once
    assert slept == [1.0]
    now[0] += 0.25  # the copy took a quarter second of its own for the next 5 MiB (half a second's worth)
    throttle(5 << 20)
    assert slept == [1.0, 0.25]
    now[0] += 1.0  # behind now: no sleep
    throttle(1 << 20)
    assert slept == [1.0, 0.25]
    assert bandwidth_throttle(0) is None


def test_a_vault_that_hangs_never_hangs_the_caller(tmp_path: Path) -> None:
    answered = tmp_path / "answered"

    def hangs() -> None:
        time.sleep(60)
        answered.touch()  # and then it would answer (None)

    with pytest.raises(vault_module.VaultUnavailable, match="did not answer within 1 s"):
        vault_module.bounded(hangs, 1.0, "restart")
    assert not answered.exists(), "the caller waited for the hung work to end"
    assert vault_module.bounded(lambda: [1, "two"], 10.0, "restart") == [1, "two"]
    with pytest.raises(VerificationFailed, match="changed"):
        vault_module.bounded(_fails, 10.0, "restart")


def _fails() -> None:
    raise VerificationFailed("image/pages-1.img has changed")


def test_a_copier_whose_lock_was_taken_over_publishes_nothing(vault: Vault, tmp_path: Path) -> None:
    """A copier stuck past LOCK_STALE_S loses its lock to another; when it wakes up it must not
    publish or prune over the new holder's work."""
    source, record = _generation(tmp_path, 1)
    with vault.lock(KEY) as beat:
        holder = vault.job_dir(KEY) / ".lock" / "holder.json"
        holder.write_text(json.dumps({"host": "node-b", "pid": 1, "start": "1", "nonce": "theirs"}))
        with pytest.raises(Busy, match="taken over"):
            vault.store(KEY, source, record, heartbeat=beat)
        with pytest.raises(Busy, match="taken over"):
            vault.prune(KEY, 1, beat)
    assert vault.generations(KEY.token) == []
    assert (vault.job_dir(KEY) / ".lock").is_dir(), "it removed the new holder's lock"


def test_one_number_made_on_two_nodes_orders_by_time(vault: Vault, tmp_path: Path) -> None:
    for stamp in ("20261130T100009Z", "20261130T100001Z"):
        folder = vault.open_job(KEY) / f"000003-{stamp}"
        folder.mkdir()
    assert [g.created for g in vault.generations(KEY.token)] == ["20261130T100001Z", "20261130T100009Z"]

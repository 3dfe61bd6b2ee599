"""The vault stores chunks (issue 29): a second checkpoint sends what changed, a job comes back from
the chunks on a node that never ran it, a damaged chunk is named, refused and repaired, and neither a
killed copier nor a killed collector ever leaves a complete generation without a chunk."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mom_checkpoint.vault.chunks import ChunkStore
from mom_checkpoint.vault.index import INDEX
from mom_checkpoint.vault.index import read as read_index
from tests.helpers import Job, Site, call_hook, crash, installed, start_restart
from tests.integration.test_vault import events, lose_the_node, numbers, psnc, sync, vault, verify

__all__ = ["vault"]  # a fixture, used by name

MIB = 1 << 20


def _checkpoint(site: Site, job: Job) -> dict[str, object]:
    """A periodic checkpoint (the job runs on) and its copy into the vault, by the hook's copier."""
    copies = len(events(site, "vault.copied"))
    result = call_hook(site.torque_args(job), site.config)
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 120
    while len(found := events(site, "vault.copied")) == copies:
        assert time.monotonic() < deadline, site.log_events()[-3:]
        time.sleep(0.05)
    return found[-1]


def _rewrite(job: Job) -> None:
    """The job rewrites its known share of its memory (COUNTER_REWRITE), and says when it has."""
    done = job.output.read_text().count("rewrote")
    os.kill(job.app_pid(), 10)  # SIGUSR1
    deadline = time.monotonic() + 30
    while job.output.read_text().count("rewrote") == done:
        assert time.monotonic() < deadline, "the job did not rewrite its memory"
        time.sleep(0.02)


def _node(site: Site, name: str, spool: Path | None = None) -> Path:
    """Another node: a spool (empty, or ``spool``) and a log of its own, the same vault."""
    if spool is None:
        spool = site.base / f"spool-{name}"
        spool.mkdir(mode=0o711)
    config = site.base / f"node-{name}.toml"
    text = site.config.read_text().replace(str(site.spool), str(spool))
    config.write_text(text.replace(str(site.log), str(site.base / f"{name}.log")))
    return config


def _restored_on(site: Site, node: Path, job_id: str) -> tuple[list[int], list[dict[str, Any]]]:
    """mom-restart --job on another node (its config ``node``) until the job has counted three
    numbers there: what it counted, and that node's log."""
    name = node.stem.removeprefix("node-")
    out = site.base / f"{name}.out"
    with open(out, "wb") as stream:
        os.chown(out, site.user.uid, site.user.gid)
        restart = start_restart(["--job", job_id], node, stdout=stream)
        deadline = time.monotonic() + 90
        while len(numbers(out)) < 3:
            assert time.monotonic() < deadline and restart.poll() is None, f"not restored on node {name}"
            time.sleep(0.05)
        restart.terminate()
        restart.wait(timeout=60)
    return numbers(out), [json.loads(line) for line in (site.base / f"{name}.log").read_text().splitlines()]


@pytest.mark.usefixtures("criu")
def test_only_what_changed_reaches_the_vault_and_the_job_comes_back_from_its_chunks(
    site: Site, vault: Path
) -> None:
    metrics = site.base / "metrics.prom"
    site.configure(vault_dir=str(vault), metrics_file=str(metrics), **{"backends.criu.run_as": "job-user"})
    rewrites = {"COUNTER_MIB": "48", "COUNTER_REWRITE": "5", "COUNTER_REWRITE_RUNS": "1"}
    job = site.start_job("751.head", app_env=rewrites, wait_s=60)
    first = _checkpoint(site, job)
    image = int(str(first["bytes"]))
    assert image > 48 * MIB and int(str(first["sent_bytes"])) > 0.9 * image  # random memory: all new
    _rewrite(job)
    before = job.count()
    second = _checkpoint(site, job)
    sent, same = int(str(second["sent_bytes"])), int(str(second["deduplicated_bytes"]))
    # 5 % of the memory rewritten in one run (2.4 MiB: 3 or 4 windows of 1 MiB): the second copy
    # sends a tenth of the image at most (a run of a few pages costs a whole window: README)
    assert sent <= 0.10 * int(str(second["bytes"])), second
    assert same >= 0.85 * int(str(second["bytes"])), second
    # what the chunks saved, in the node's metrics (both copies; written once each copier is done)
    deadline = time.monotonic() + 30
    while "mom_checkpoint_vault_copies_total 2.0" not in (metrics.read_text() if metrics.exists() else ""):
        assert time.monotonic() < deadline, metrics.read_text() if metrics.exists() else "no metrics"
        time.sleep(0.05)
    counters = dict(
        line.split() for line in metrics.read_text().splitlines() if line.startswith("mom_checkpoint_vault_")
    )
    assert float(counters["mom_checkpoint_vault_sent_bytes_total"]) == int(str(first["sent_bytes"])) + sent
    assert float(counters["mom_checkpoint_vault_deduplicated_bytes_total"]) >= same
    assert float(counters["mom_checkpoint_vault_compression_ratio"]) >= 1.0
    newest = site.generations("751.head")[-1]
    copy = vault / f"torque.{site.user.uid}.751.head" / newest.name
    assert sorted(p.name for p in copy.iterdir()) == ["chunks.index", "manifest.json"]
    assert verify(site, copy).returncode == 0
    # both copies took the chunks the hook recorded as it sealed the generation (root's, beside the
    # manifest) and read only the new ones; they are the chunks the vault's copy is made of
    assert first["sealed"] is True and second["sealed"] is True, (first, second)
    recorded = (newest / INDEX).stat()
    assert recorded.st_uid == 0 and recorded.st_mode & 0o777 == 0o600

    def chunks(generation: Path) -> list[tuple[str, list[tuple[bytes, int]]]]:
        return [(f.path, [(c.digest, c.size) for c in f.chunks]) for f in read_index(generation).files]

    assert chunks(newest) == chunks(copy)
    checkpointed = numbers(job.output)[-1]

    # node A is lost with its spool; node B, which never ran the job, brings it back from the chunks
    lose_the_node(site, job)
    got, logged = _restored_on(site, _node(site, "b"), "751.head")
    assert before < got[0] <= checkpointed + 1 and got == list(range(got[0], got[-1] + 1)), got[:3]
    assert [e["source"] for e in logged if e["event"] == "restart.fetched"] == [str(copy)]


@pytest.mark.usefixtures("criu")
def test_a_damaged_chunk_is_named_refused_and_written_again_by_the_next_sync(site: Site, vault: Path) -> None:
    site.configure(vault_dir=str(vault), **{"backends.criu.run_as": "job-user"})
    job = site.start_job("752.head", app_env={"COUNTER_MIB": "16", "COUNTER_REWRITE": "5"}, wait_s=60)
    _checkpoint(site, job)
    _checkpoint(site, job)  # two generations in the vault, sharing most chunks
    folder = vault / f"torque.{site.user.uid}.752.head"
    older, newer = sorted(p for p in folder.iterdir() if p.name[:1].isdigit())
    store = ChunkStore(vault, site.user.uid)
    shared = sorted(read_index(older).digests() & read_index(newer).digests())
    victim = store.path(random.Random(29).choice(shared))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, in a chunk both generations hold
    victim.write_bytes(bytes(data))

    checked = verify(site, newer)
    assert checked.returncode == 65 and checked.stderr.count("\n") == 1, checked.stderr
    assert victim.name in checked.stderr and "break 2 generation(s)" in checked.stderr
    assert older.name in checked.stderr and newer.name in checked.stderr
    assert not victim.exists() and list((store.root / ".damaged").iterdir()), "not set aside"

    # a restart on a node without the job's own generations refuses the copy with one line
    crash(job)
    node_b = _node(site, "b")
    refused = start_restart(["--job", "752.head"], node_b)
    assert refused.wait(timeout=60) == 65
    assert refused.stderr is not None and "missing from the vault" in refused.stderr.read().decode()

    # node C has only the job's older generation: it says why it does not take the vault's newer
    # copy, and restores its own
    spool_c = site.base / "spool-c"
    shutil.copytree(site.spool, spool_c, symlinks=True)
    shutil.rmtree(next(spool_c.glob("*.752.head")) / newer.name)
    _, logged = _restored_on(site, _node(site, "c", spool=spool_c), "752.head")
    [refused_copy] = [e for e in logged if e["event"] == "restart.vault_copy_refused"]
    assert "missing from the vault" in refused_copy["error"]
    assert [e["path"] for e in logged if e["event"] == "restart.newest"][-1].endswith(older.name)

    # node A still has the generation: its next vault-sync writes the lost chunk again
    done = sync(site, "--job", "752.head", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [c["status"] for c in json.loads(done.stdout)["data"]] == ["repaired"]
    assert victim.exists() and verify(site, newer).returncode == 0 and verify(site, older).returncode == 0


def test_no_kill_of_a_copier_or_a_collector_leaves_a_generation_without_its_chunks(
    site: Site, vault: Path
) -> None:
    """vault-sync and the collector killed with SIGKILL at random moments (seed printed): every
    generation with a name verifies, and the next sync and collection finish the work."""
    seed = int(os.environ.get("MOM_TEST_SEED", str(random.SystemRandom().randrange(1 << 30))))
    print(f"seed {seed} (MOM_TEST_SEED={seed} replays it)", file=sys.stderr)
    rng = random.Random(seed)

    def configure(vault_dir: Path, **keys: object) -> None:
        psnc(site, image_bytes=24 << 20, keep=1, vault_keep=1, vault_dir=str(vault_dir), **keys)

    configure(site.base / "off")  # the hook's own copier finds no vault: the test's copiers copy
    job = site.start_job("753.head")
    folder = vault / f"torque.{site.user.uid}.753.head"
    for _round in range(3):
        assert call_hook(site.torque_args(job), site.config).returncode == 0  # a new generation each
        configure(vault, vault_bandwidth_mib_s=24)  # a copy of 1 s or so: killed in the middle
        for what in ("vault-sync", "collect"):
            program = _collector(site, vault) if what == "collect" else _syncer(site)
            time.sleep(rng.uniform(0.05, 0.8))
            program.kill()
            program.wait()
            for generation in (
                (p for p in folder.iterdir() if p.name[:1].isdigit()) if folder.is_dir() else []
            ):
                assert verify(site, generation).returncode == 0, (seed, what, generation)
        configure(site.base / "off")
    configure(vault)
    done = sync(site, "--job", "753.head")
    assert done.returncode == 0, done.stdout + done.stderr
    [generation] = [p for p in folder.iterdir() if p.name[:1].isdigit()]
    assert (
        generation.name == site.generations("753.head")[-1].name and verify(site, generation).returncode == 0
    )
    # every chunk no generation references is condemned, then removed once it has waited
    store = ChunkStore(vault, site.user.uid)
    _collect(site, vault)
    assert set(store.listing()) == read_index(generation).digests()
    old = time.time() - 2 * 3600
    for condemned in (store.root / ".condemned").iterdir():
        os.utime(condemned, (old, old))
    _collect(site, vault)
    assert store.condemned() == {} and verify(site, generation).returncode == 0


def _syncer(site: Site) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(installed("mom-checkpoint")), "vault-sync", "--job", "753.head"],
        env={"PATH": "/bin:/usr/bin", "MOM_CHECKPOINT_CONFIG": str(site.config)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _collector(site: Site, vault: Path) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from mom_checkpoint.vault.store import Vault; "
        "Vault(sys.argv[1]).collect(int(sys.argv[2]), when_due=False)"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(vault), str(site.user.uid)])


def _collect(site: Site, vault: Path) -> None:
    done = _collector(site, vault)
    assert done.wait(timeout=60) == 0


def test_doctor_names_the_nodes_that_still_write_full_copies(site: Site, vault: Path) -> None:
    """Nodes of one vault upgrade together (issue 29 #7): a full copy of the vault's first layout
    written after the vault went to chunks comes from an older node, which doctor names; such
    copies still restore (the first layout is read as before) and age out with retention."""

    def layout() -> str:
        done = subprocess.run(
            [str(installed("mom-checkpoint")), "doctor", "--mom-config", "/nonexistent"],
            env={"PATH": "/bin:/usr/bin", "MOM_CHECKPOINT_CONFIG": str(site.config)},
            capture_output=True,
            text=True,
        )
        return next(line for line in done.stdout.splitlines() if "vault layout:" in line)

    psnc(site, image_bytes=1 << 20, vault_dir=str(vault))
    assert layout().startswith("[ok  ]") and "no chunks yet" in layout()
    job = site.start_job("754.head")
    assert call_hook(site.torque_args(job), site.config).returncode == 0
    assert sync(site, "--job", "754.head").returncode == 0
    assert layout().startswith("[ok  ]") and "no node writes full copies" in layout()
    # an older node's copy: the spool's generation as it is, its manifest naming that node
    [generation] = site.generations("754.head")
    old = vault / f"torque.{site.user.uid}.755.head" / generation.name
    shutil.copytree(generation, old, ignore=shutil.ignore_patterns(INDEX))  # (an older hook records none)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(
        json.dumps({**manifest, "host": {**manifest["host"], "name": "node-old"}})
    )
    os.utime(old)  # written now, as the older node's copier writes it
    assert layout().startswith("[FAIL]") and "1 full copies" in layout() and "node-old" in layout()
    assert verify(site, old).returncode == 0  # the first layout still reads as it did


def test_a_collection_or_a_repair_that_fails_is_said_and_takes_nothing_from_the_vault(
    site: Site, vault: Path
) -> None:
    """A collection that cannot read one of the owner's generations removes nothing and fails no
    copy (vault.collect_failed); a repair whose local bytes are no longer those of the lost chunk
    writes nothing, says so (vault.repair_failed, exit 1), and the generation stays named broken."""

    def configure(vault_dir: Path) -> None:
        psnc(site, image_bytes=3 << 20, keep=1, vault_keep=1, vault_dir=str(vault_dir))

    def checkpoint_and_copy(job: Job) -> dict[str, Any]:
        configure(site.base / "off")  # the hook's own copier finds no vault: the test's copies
        assert call_hook(site.torque_args(job), site.config).returncode == 0
        configure(vault)
        done = sync(site, "--job", job.job_id, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        [copy] = json.loads(done.stdout)["data"]
        return dict(copy)

    first, other = site.start_job("756.head"), site.start_job("757.head")
    assert checkpoint_and_copy(first)["status"] == "copied"
    assert checkpoint_and_copy(other)["status"] == "copied"
    [unreadable] = [p for p in (vault / f"torque.{site.user.uid}.757.head").iterdir() if p.name[:1].isdigit()]
    (unreadable / INDEX).write_bytes(b"\x93not an index")  # root's 0600 still: a damaged index
    store = ChunkStore(vault, site.user.uid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(store.root / ".collected")  # a collection is due
    chunks_before = set(store.listing())
    copy = checkpoint_and_copy(first)  # the older copy of 756 pruned: its chunks are the collector's
    assert copy["status"] == "copied"
    [failed] = events(site, "vault.collect_failed")
    assert unreadable.name in str(failed["error"]) and failed["uid"] == site.user.uid
    assert store.condemned() == {} and chunks_before <= set(store.listing())  # nothing taken away

    # a chunk of 756's copy lost; the node's generation changed since (as a failing disk would)
    [newest] = [p for p in (vault / f"torque.{site.user.uid}.756.head").iterdir() if p.name[:1].isdigit()]
    entry = next(f for f in read_index(newest).files if f.size > 1 << 20)
    lost = entry.chunks[1]
    os.unlink(store.path(lost.name))
    local = site.generations("756.head")[-1] / entry.path
    with open(local, "r+b") as image:
        image.seek(entry.chunks[0].size + 100)
        image.write(b"\xff" * 8)
    done = sync(site, "--job", "756.head", "--json")
    assert done.returncode == 1 and [c["status"] for c in json.loads(done.stdout)["data"]] == ["failed"]
    [said] = events(site, "vault.repair_failed")
    assert "changed" in str(said["error"]) and said["generation"] == newest.name
    assert not store.path(lost.name).exists()  # nothing written in its name but its own bytes
    checked = verify(site, newest)  # the chunk named; the generation whose index is damaged as well
    assert checked.returncode == 65 and checked.stderr.count("\n") == 1, checked.stderr
    assert lost.name in checked.stderr and "break 1 generation(s)" in checked.stderr
    assert f"{unreadable.name} cannot be read (damaged index)" in checked.stderr

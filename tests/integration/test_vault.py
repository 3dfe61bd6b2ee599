"""The vault: every checkpoint also copied, in the background, to storage that outlives the node, and a
job restarted from it on a node that never ran it (issue 15).

The vault here is a tmpfs the test mounts: a file system of its own, as a cluster's shared one is. "Node
B" is this machine with its spool emptied (a fresh node's) and the same vault_dir: the spool path is
the same on every node of a cluster, as pbs_mom's paths are.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import helpers
from tests.helpers import (
    HookResult,
    Job,
    Site,
    User,
    call_hook,
    crash,
    installed,
    start_restart,
    wait_restored_as,
    wait_until_gone,
)
from tests.integration.test_restart_own import sudo_rule, user_job

__all__ = ["sudo_rule"]  # a fixture, used by name

MOM_ENV = {"PATH": "/bin:/usr/bin"}


@pytest.fixture
def vault(site: Site) -> Iterator[Path]:
    """A file system of its own, root's 0700 (tmpfs: the size is a limit, not a cost)."""
    path = site.base / "vault"
    path.mkdir()
    _mount(path, "size=512m")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _mount(path: Path, options: str) -> None:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"{options},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs for the vault: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs for the vault: {done.stderr.strip()}")


def sync(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(installed("mom-checkpoint")), "vault-sync", *args],
        env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def in_vault(vault: Path, job_id: str, uid: int) -> list[Path]:
    folder = vault / f"torque.{uid}.{job_id}"
    return sorted(p for p in folder.iterdir() if p.name[:1].isdigit()) if folder.is_dir() else []


def wait_in_vault(vault: Path, job_id: str, uid: int, name: str, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while not (vault / f"torque.{uid}.{job_id}" / name).is_dir():
        assert time.monotonic() < deadline, f"{name} never reached the vault"
        time.sleep(0.05)
    return vault / f"torque.{uid}.{job_id}" / name


def verify(site: Site, target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(installed("mom-checkpoint")), "verify", str(target)],
        env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)},
        capture_output=True,
        text=True,
    )


def lose_the_node(site: Site, job: Job | None = None) -> None:
    """The node is gone: its job killed, its local spool with it; a new node's spool is empty."""
    if job is not None:
        crash(job)
    shutil.rmtree(site.spool)
    site.spool.mkdir(mode=0o711)


def numbers(path: Path) -> list[int]:
    return helpers.numbers(path.read_text())


def events(site: Site, name: str) -> list[dict[str, object]]:
    return [e for e in site.log_events() if e.get("event") == name]


def wait_event(site: Site, name: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while not (found := events(site, name)):
        assert time.monotonic() < deadline, f"no {name} in the log: {site.log_events()[-3:]}"
        time.sleep(0.05)
    return found[-1]


@pytest.mark.usefixtures("criu")
def test_a_job_whose_node_was_lost_comes_back_from_the_vault_in_every_restart_form(
    site: Site, vault: Path, sudo_rule: Path
) -> None:
    """Node A checkpoints the job, the copy reaches the vault, node A is lost with its spool. Nodes B
    and D (spools of their own) and C (a fresh spool at A's path: a TORQUE pointer names a spool
    path, and pbs_mom's paths are the same on every node) each bring it back from the vault."""
    site.configure(vault_dir=str(vault), **{"backends.criu.run_as": "job-user"})
    job = site.start_job("701.head", app_env={"COUNTER_LIMIT": "120", "COUNTER_EXIT": "7"})
    pids = [job.exec_pid(), job.app_pid()]
    before = job.count()
    result, args = call_hook_with_args(site, job)
    assert result.returncode == 0, result.stderr
    after = job.count()
    [generation] = site.generations("701.head")
    copy = wait_in_vault(vault, "701.head", site.user.uid, generation.name)
    assert verify(site, copy).returncode == 0
    copied = wait_event(site, "vault.copied")
    assert (
        copied["job_id"] == "701.head"
        and copied["bytes"] == json.loads((generation / "manifest.json").read_text())["total_bytes"]
    )
    node_a = site.config.read_text()
    lose_the_node(site, job)
    pointer = site.checkpoint_dir("701.head") / str(args[5])
    assert pointer.exists(), "TORQUE stages the pointer to the node that restarts the job"

    def came_back(output: Path, status: int, since: tuple[int, int] = (before, after)) -> None:
        got = numbers(output)
        assert since[0] < got[0] <= since[1] + 1, (since, got[:3])  # from the checkpoint
        assert got == list(range(got[0], 121)), "the job did not count on to its end"
        assert status == 7, "the job's own exit status"

    def node(name: str) -> tuple[Path, Path]:
        """Another node's config: its own spool and log, the same vault."""
        spool, log = site.base / f"spool-{name}", site.base / f"{name}.log"
        spool.mkdir(mode=0o711)
        config = site.base / f"node-{name}.toml"
        config.write_text(node_a.replace(str(site.spool), str(spool)).replace(str(site.log), str(log)))
        return config, log

    def fetched(log: Path) -> list[dict[str, object]]:
        return [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "restart.fetched"]

    # 1. node B, root's --job (the seed's flow): the application writes into mom-restart's stdout;
    #    then the restored job is checkpointed on node B, and its generations count on
    config_b, log_b = node("b")
    out = site.base / "restart-job.out"
    with open(out, "wb") as stream:
        # the job's output file, as its batch system makes it: the owner's (opened again in the job's
        # mount namespace with their rights, so that a dump from inside finds it on a mount it has)
        os.chown(out, site.user.uid, site.user.gid)
        restart = start_restart(["--job", "701.head"], config_b, stdout=stream)
        deadline = time.monotonic() + 60
        while len(numbers(out)) < 3:
            assert time.monotonic() < deadline and restart.poll() is None, "not restored on node B"
            time.sleep(0.05)
        b_before = numbers(out)[-1]
        again = call_hook([restart.pid, *site.torque_args(job)[1:]], config_b)  # the restart's session
        assert again.returncode == 0, again.stderr
        b_after = numbers(out)[-1]
        status = restart.wait(timeout=120)
    came_back(out, status)
    assert len(fetched(log_b)) == 1, "the generation did not come from the vault"
    assert sorted(p.name[:6] for p in (site.base / "spool-b").glob("*.701.head/0*")) == ["000001", "000002"]
    wait_until_gone(pids)

    # 2. node C, TORQUE's $restart_script, 6 arguments, node A's pointer staged back by TORQUE: the
    #    generation it names, though node B's later one is in the vault too
    job.output.write_text("")
    restart = start_restart(
        [job.session_id, "701.head", site.user.name, site.user.name, args[4], args[5]], site.config
    )
    status = restart.wait(timeout=120)
    came_back(job.output, status)
    assert len(fetched(site.log)) == 1
    wait_until_gone(pids)

    # 2b. node E, TORQUE's form again, on a node whose spool_dir is not node A's (issue 28 #7): the
    #     pointer names the job's run folder and generation, not node A's spool
    config_e, log_e = node("e")
    job.output.write_text("")
    restart = start_restart(
        [job.session_id, "701.head", site.user.name, site.user.name, args[4], args[5]], config_e
    )
    status = restart.wait(timeout=120)
    came_back(job.output, status)
    [from_vault] = fetched(log_e)
    assert str(from_vault["source"]).endswith(generation.name), from_vault  # the one the pointer names
    wait_until_gone(pids)

    # 3. node D, a new job of the user on a node that never ran it: the seed's resume_job.sh through
    #    sudo, from the newest copy: node B's
    config_d, log_d = node("d")
    site.config.write_text(config_d.read_text())  # user_job passes site.config: node D's now
    resumed = site.jobs_dir / "702.head.OU"
    new = user_job(
        site, site.user, f"exec sudo -n {sudo_rule} --own --job 701.head", site.jobs_dir, output=resumed
    )
    _, err = new.communicate(timeout=120)
    came_back(resumed, new.returncode, since=(b_before, b_after))
    assert len(fetched(log_d)) == 1, err


def test_two_nodes_restore_the_same_copy_side_by_side(site: Site, vault: Path) -> None:
    """Issue 28 #8: two nodes sharing the vault restore the same generation at the same time (a job
    resubmitted twice, say): each restores it into a namespace of its own, with the job's PIDs, and
    neither is in the other's way."""
    site.configure(vault_dir=str(vault), **{"backends.criu.run_as": "job-user"})
    job = site.start_job("704.head", app_env={"COUNTER_LIMIT": "100000"})
    pids = [job.exec_pid(), job.app_pid()]
    result, _ = call_hook_with_args(site, job)
    assert result.returncode == 0, result.stderr
    [generation] = site.generations("704.head")
    wait_in_vault(vault, "704.head", site.user.uid, generation.name)
    node_a = site.config.read_text()
    lose_the_node(site, job)
    restarts: list[subprocess.Popen[bytes]] = []
    outputs: list[Path] = []
    try:
        for name in ("b", "c"):  # two nodes: spools and logs of their own, the same vault
            spool = site.base / f"spool-{name}"
            spool.mkdir(mode=0o711)
            config = site.base / f"node-{name}.toml"
            log = str(site.base / f"{name}.log")
            config.write_text(node_a.replace(str(site.spool), str(spool)).replace(str(site.log), log))
            output = site.base / f"{name}.out"
            with open(output, "wb") as stream:
                os.chown(output, site.user.uid, site.user.gid)
                restarts.append(start_restart(["--job", "704.head"], config, stdout=stream))
            outputs.append(output)
        inside = [wait_restored_as(restart, pids) for restart in restarts]
        assert len({os.stat(f"/proc/{found[pids[0]]}/ns/pid").st_ino for found in inside}) == 2
        for output in outputs:
            deadline = time.monotonic() + 30
            while len(numbers(output)) < 3:
                assert time.monotonic() < deadline, f"{output.name}: the job does not count on"
                time.sleep(0.05)
        assert all(restart.poll() is None for restart in restarts)
    finally:
        for restart in restarts:
            restart.terminate()
            restart.wait(timeout=30)


def call_hook_with_args(site: Site, job: Job) -> tuple[HookResult, list[object]]:
    args = site.torque_args(job)
    return call_hook(args, site.config), args


def psnc(site: Site, image_bytes: int = 4096, **keys: Any) -> None:
    """The seed's checkpointer (its stand-in): no CRIU needed where only the copy is tested."""
    chkpnt = site.standin("chkpnt", STANDIN_IMAGE_BYTES=str(image_bytes))
    site.configure(
        backend="psnc",
        **{"backends.psnc.chkpnt": str(chkpnt), "backends.psnc.resume": str(site.standin("resume"))},
        **keys,
    )


def test_a_missing_full_or_read_only_vault_never_fails_or_delays_the_checkpoint(
    site: Site, vault: Path
) -> None:
    """The hook only starts the copy; a vault that is not there, full or read-only is the copier's
    failure, logged, and the next sync (the timer's) finishes the copy once the vault is back."""
    job = site.start_job("703.head")
    psnc(site, vault_dir=str(site.base / "not-mounted"))
    result = call_hook(site.torque_args(job), site.config)
    assert result.returncode == 0, result.stderr
    failed = wait_event(site, "vault.sync_failed")
    assert "does not exist (not mounted?)" in str(failed["error"])
    assert not (site.base / "not-mounted").exists(), "a missing mount point was created on the node's disk"

    psnc(site, vault_dir=str(vault))
    subprocess.run(["mount", "-o", "remount,ro", str(vault)], check=True)
    try:
        assert call_hook(site.torque_args(job), site.config).returncode == 0
        failed = wait_event(site, "vault.copy_failed")
        assert "read-only" in str(failed["error"]), failed
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(vault)], check=True)
    done = sync(site)
    assert done.returncode == 0, done.stdout + done.stderr
    newest = site.generations("703.head")[-1]
    assert "copied  703.head " in done.stdout and newest.name in done.stdout
    assert verify(site, vault / f"torque.{site.user.uid}.703.head" / newest.name).returncode == 0


def test_a_full_vault_leaves_no_partial_generation(site: Site) -> None:
    small = site.base / "small-vault"
    small.mkdir()
    _mount(small, "size=1m")
    try:
        psnc(site, image_bytes=4 << 20, vault_dir=str(small), vault_quota_gib=1)  # the vault, not a share
        job = site.start_job("704.head")
        assert call_hook(site.torque_args(job), site.config).returncode == 0
        done = sync(site)
        assert done.returncode == 1 and "the vault is full" in done.stdout, done.stdout + done.stderr
        leftovers = [p.name for p in (small / f"torque.{site.user.uid}.704.head").iterdir()]
        assert leftovers == [], leftovers
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_copier_killed_at_any_moment_leaves_nothing_half_copied_and_the_next_sync_completes_it(
    site: Site, vault: Path
) -> None:
    psnc(site, image_bytes=24 << 20, vault_bandwidth_mib_s=16, vault_dir=str(site.base / "off"))
    job = site.start_job("705.head")
    assert call_hook(site.torque_args(job), site.config).returncode == 0  # no vault yet: nothing copied
    psnc(site, image_bytes=24 << 20, vault_bandwidth_mib_s=16, vault_dir=str(vault))
    [generation] = site.generations("705.head")
    folder = vault / f"torque.{site.user.uid}.705.head"
    rng = random.Random(15)
    for _attempt in range(4):
        copier = subprocess.Popen(
            [str(installed("mom-checkpoint")), "vault-sync", "--job", "705.head"],
            env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.2, 1.2))  # the copy takes 1.5 s at 16 MiB/s
        copier.kill()
        copier.wait()
        complete = [p for p in folder.iterdir() if p.name[:1].isdigit()] if folder.is_dir() else []
        for copy in complete:  # whatever has a generation name is complete and verifies
            assert verify(site, copy).returncode == 0, copy
        if complete:
            break
    done = sync(site, "--job", "705.head")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in folder.iterdir()] == [generation.name], "leftovers of the killed copiers"
    assert verify(site, folder / generation.name).returncode == 0
    assert not list(generation.parent.glob(".vaulting-*")), "the killed copiers' snapshots were left"


def test_a_prune_while_a_copy_runs_takes_nothing_from_it(site: Site, vault: Path) -> None:
    psnc(site, image_bytes=16 << 20, vault_bandwidth_mib_s=8, keep=1, vault_dir=str(site.base / "off"))
    job = site.start_job("706.head")
    assert call_hook(site.torque_args(job), site.config).returncode == 0
    [first] = site.generations("706.head")
    psnc(site, image_bytes=16 << 20, vault_bandwidth_mib_s=8, keep=1, vault_dir=str(vault))
    copier = subprocess.Popen(
        [str(installed("mom-checkpoint")), "vault-sync", "--job", "706.head"],
        env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)},
        stdout=subprocess.PIPE,
        text=True,
    )
    copying = vault / f"torque.{site.user.uid}.706.head"
    deadline = time.monotonic() + 60
    while not list(copying.glob(".incoming-*")):  # copying (2 s at 8 MiB/s): its copy is being written
        assert time.monotonic() < deadline and copier.poll() is None, "the copy never started"
        time.sleep(0.01)
    psnc(
        site, image_bytes=16 << 20, keep=1, vault_dir=str(site.base / "off")
    )  # this checkpoint copies nothing
    assert call_hook(site.torque_args(job), site.config).returncode == 0
    assert not first.exists(), "keep=1 pruned the generation being copied"
    out, _ = copier.communicate(timeout=60)
    assert copier.returncode == 0 and f"copied  706.head {first.name}" in out, out
    assert verify(site, vault / f"torque.{site.user.uid}.706.head" / first.name).returncode == 0


def test_two_nodes_copying_the_same_job_make_one_copy(site: Site, vault: Path, job_user: User) -> None:
    """Two nodes with the same generation (a spool copied across, as after a restart elsewhere) sync
    at once: the vault's lock lets one copy, the other says busy, and one complete copy is left."""
    from tests.helpers import Site as Node
    from tests.helpers import make_base, remove_base

    psnc(site, image_bytes=16 << 20, vault_bandwidth_mib_s=8, vault_dir=str(site.base / "off"))
    job = site.start_job("707.head")
    assert call_hook(site.torque_args(job), site.config).returncode == 0
    other = Node(make_base(), job_user)
    try:
        shutil.rmtree(other.spool)
        shutil.copytree(site.spool, other.spool, symlinks=True)  # root's copies, same modes
        for node in (site, other):
            psnc(node, image_bytes=16 << 20, vault_bandwidth_mib_s=8, vault_dir=str(vault))
        both = [
            subprocess.Popen(
                [str(installed("mom-checkpoint")), "vault-sync", "--json"],
                env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(node.config)},
                stdout=subprocess.PIPE,
                text=True,
            )
            for node in (site, other)
        ]
        results = [json.loads(p.communicate(timeout=60)[0])["data"][0]["status"] for p in both]
        assert sorted(results) in (["busy", "copied"], ["copied", "present"]), results
    finally:
        other.stop_jobs()
        remove_base(other.base)
    [name] = [p.name for p in (vault / f"torque.{site.user.uid}.707.head").iterdir()]
    assert name == site.generations("707.head")[0].name


def test_another_user_can_neither_read_list_nor_restore_a_job_in_the_vault(
    site: Site, vault: Path, root_user: User, sudo_rule: Path
) -> None:
    psnc(site, vault_dir=str(vault))
    theirs = site.start_job("708.head", user=root_user)
    assert call_hook(site.torque_args(theirs), site.config).returncode == 0
    wait_in_vault(vault, "708.head", 0, site.generations("708.head")[0].name)
    lose_the_node(site, theirs)
    probe = user_job(site, site.user, f"ls {vault}; cat {vault}/*/*/manifest.json", site.jobs_dir)
    _, err = probe.communicate(timeout=30)
    assert probe.returncode != 0 and "Permission denied" in err, err
    attempt = user_job(site, site.user, f"sudo -n {sudo_rule} --own --job 708.head", site.jobs_dir)
    _, err = attempt.communicate(timeout=60)
    assert attempt.returncode == 66 and "job 708.head has no complete checkpoint" in err, err
    assert not events(site, "restart.fetched"), "another user's generation was brought to the node"
    assert not any(site.spool.iterdir()) or not list(site.spool.glob("*.708.head")), "fetched for them"


def test_list_shows_what_is_in_the_vault_and_what_is_only_there(site: Site, vault: Path) -> None:
    psnc(site, vault_dir=str(vault))
    job = site.start_job("709.head")
    assert call_hook(site.torque_args(job), site.config).returncode == 0
    first = site.generations("709.head")[0]
    wait_in_vault(vault, "709.head", site.user.uid, first.name)
    psnc(site, vault_dir=str(site.base / "off"))
    assert call_hook(site.torque_args(job), site.config).returncode == 0  # not copied
    shutil.rmtree(first)  # pruned here; the vault keeps it
    psnc(site, vault_dir=str(vault))
    listed = subprocess.run(
        [str(installed("mom-checkpoint")), "list", "709.head", "--json"],
        env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)},
        capture_output=True,
        text=True,
    )
    rows = {(r["number"], r["status"], r["vault"]) for r in json.loads(listed.stdout)["data"]}
    assert rows == {(1, "vault-only", True), (2, "complete", False)}, rows


def test_doctor_checks_the_vault(site: Site, vault: Path) -> None:
    def doctor() -> str:
        done = subprocess.run(
            [str(installed("mom-checkpoint")), "doctor", "--mom-config", "/nonexistent"],
            env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)},
            capture_output=True,
            text=True,
        )
        lines = done.stdout.splitlines()
        at = next(i for i, line in enumerate(lines) if line[7:13] == "vault:")
        return "\n".join(lines[at : at + 2])  # the check, and its fix

    site.configure(vault_dir=str(vault))
    assert doctor().startswith("[ok  ] vault") and "(tmpfs) root's, mode 700" in doctor()
    site.configure(vault_dir=str(site.base / "elsewhere"))
    assert "[FAIL] vault" in doctor() and "not mounted?" in doctor()
    same = site.base / "same-disk"
    same.mkdir(mode=0o700)
    site.configure(vault_dir=str(same))
    assert "same file system as the spool" in doctor()
    os.chown(vault, 65534, 65534)  # what root_squash shows: the export's folders are nobody's
    site.configure(vault_dir=str(vault))
    assert "root_squash" in doctor() and "no_root_squash" in doctor()
    os.chown(vault, 0, 0)
    vault.chmod(0o755)
    assert "must be 0700" in doctor()


@pytest.mark.usefixtures("criu")
def test_an_openpbs_job_held_on_a_lost_node_restarts_from_the_vault(site: Site, vault: Path) -> None:
    """OpenPBS's restart action, with %path naming the checkpoint that only the vault still has."""
    from tests.integration.test_openpbs import configure, make_mom
    from tests.openpbs import Task

    metrics = site.base / "metrics.prom"
    configure(site, vault_dir=str(vault), metrics_file=str(metrics), **{"backends.criu.run_as": "job-user"})
    mom = make_mom(site)
    job = site.start_job("710.vm", app_env={"COUNTER_LIMIT": "100", "COUNTER_EXIT": "5"})
    pids = [job.exec_pid(), job.app_pid()]
    task = Task(job, "710.vm")
    held = mom.checkpoint(task, abort=True)  # qhold
    assert held.status == 0, events(site, "checkpoint.refused")
    job.wait_ended()
    held_at = numbers(job.output)[-1]
    [generation] = site.generations("710.vm")
    copy = vault / f"openpbs.{site.user.uid}.710.vm" / generation.name
    deadline = time.monotonic() + 60
    while not copy.is_dir():
        assert time.monotonic() < deadline, "the held job never reached the vault"
        time.sleep(0.05)
    checked = subprocess.run(
        [str(installed("mom-checkpoint")), "verify", "--vault", "710.vm"],
        env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)},
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0 and str(copy) in checked.stdout, checked.stdout + checked.stderr
    deadline = time.monotonic() + 30
    while "mom_checkpoint_vault_copies_total 1.0" not in (metrics.read_text() if metrics.exists() else ""):
        assert time.monotonic() < deadline, metrics.read_text() if metrics.exists() else "no metrics"
        time.sleep(0.05)
    lose_the_node(site, job)
    job.output.write_text("")  # pbs_mom re-creates the output before the restart
    _pid, status = mom.restart(task, old_sid=job.session_id)
    assert status == 5, events(site, "restart.refused")
    got = numbers(job.output)  # what it printed before the hold is put back, from the vault's copy too
    assert got == list(range(1, 101)) and held_at < 100, got[held_at - 2 : held_at + 2]
    assert events(site, "restart.fetched")
    wait_until_gone(pids)


@pytest.mark.usefixtures("criu")
def test_a_job_user_image_from_the_vault_is_never_restored_by_roots_checkpointer(
    site: Site, vault: Path
) -> None:
    """In job-user mode the job's user wrote the image; its vault copy is root's files. A node that
    restores as root must still refuse it (its own spool refuses it by the files' owner)."""
    site.configure(vault_dir=str(vault), **{"backends.criu.run_as": "job-user"})
    job = site.start_job("711.head")
    assert call_hook(site.torque_args(job), site.config).returncode == 0
    wait_in_vault(vault, "711.head", site.user.uid, site.generations("711.head")[0].name)
    lose_the_node(site, job)
    site.configure(vault_dir=str(vault), **{"backends.criu.run_as": "root"})  # node B restores as root
    restart = start_restart(["--job", "711.head"], site.config)
    assert restart.wait(timeout=60) == 77
    err = restart.stderr.read().decode() if restart.stderr else ""
    assert "checkpointed in job-user mode and this node restores as root" in err, err


def test_a_restart_whose_checkpoint_has_not_reached_the_vault_fails_with_its_own_code(
    site: Site, vault: Path
) -> None:
    """qhold on node A, qrls onto node B while A still copies: TORQUE's pointer names generation 2,
    the vault has only generation 1. The restart refuses the older one with 83 (not 75, which is
    "busy"): TORQUE records the script's code as the job's exit status, so accounting tells it apart."""
    psnc(site, vault_dir=str(vault))
    job = site.start_job("711.head")
    assert call_hook(site.torque_args(job), site.config).returncode == 0
    [first] = site.generations("711.head")
    wait_in_vault(vault, "711.head", site.user.uid, first.name)
    psnc(site, vault_dir=str(site.base / "not-mounted"))  # the second copy cannot start: "still travelling"
    result, args = call_hook_with_args(site, job)
    assert result.returncode == 0, result.stderr
    second = site.generations("711.head")[-1]
    wait_event(site, "vault.sync_failed")
    psnc(site, vault_dir=str(vault))
    lose_the_node(site, job)
    restart = start_restart(
        [job.session_id, "711.head", site.user.name, site.user.name, args[4], args[5]],
        site.config,
    )
    assert restart.wait(timeout=60) == 83
    assert restart.stderr is not None
    message = restart.stderr.read().decode()
    assert f"the checkpoint {second.name} of job 711.head is neither on this node nor in the vault" in message
    assert message.count("\n") == 1, message
    assert [p.name for p in in_vault(vault, "711.head", site.user.uid)] == [first.name]
    assert not site.generations("711.head"), "an older generation was brought onto the node"
    refused = events(site, "restart.refused")
    assert refused and refused[-1]["exit_status"] == 83, refused

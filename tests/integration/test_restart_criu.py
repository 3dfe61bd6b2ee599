"""mom-restart on real CRIU, started the way pbs_mom starts $restart_script (fork, setsid, execv,
stdio on /dev/null, cwd /)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import (
    TICKER,
    Site,
    call_hook,
    crash,
    is_running,
    numbers,
    qhold_and_lose,
    restart_args,
    restored_by,
    start_restart,
    verify_generation,
    wait_not_running,
    wait_restored_as,
    wait_until_gone,
    without_namespaces,
)

pytestmark = pytest.mark.usefixtures("criu")


def wait_restored(restart: subprocess.Popen[bytes], pids: list[int], timeout: float = 30) -> list[int]:
    """Wait until CRIU has given these pids back, as the job sees them, in a PID namespace of its own
    (the job's exec PID first, a child of the restart process), all in the one session the job leads
    there; the same processes as the node sees them."""
    found = wait_restored_as(restart, pids, timeout)
    on_node = [found[pid] for pid in pids]
    assert len({os.getsid(pid) for pid in on_node}) == 1, "the job must be in one session"
    return on_node


def test_count_goes_on_after_qhold_and_the_exit_status_comes_back(user_mode: Site) -> None:
    site = user_mode
    job = site.start_job("601.head", app_env={"COUNTER_LIMIT": "120", "COUNTER_EXIT": "7"})
    job.wait_count(10)
    restored = [job.exec_pid(), job.app_pid()]
    args, printed = qhold_and_lose(site, job, empty_output=True)
    checkpointed = numbers(printed)[-1]

    restart = start_restart(restart_args(job, args), site.config)
    on_node = wait_restored(restart, restored)
    assert restart.wait(timeout=60) == 7, restart.stderr.read() if restart.stderr else ""
    # what the job printed before the qhold is put back into the re-created file first (issue 13 #3)
    after = job.counts()
    assert after == list(range(1, 121)), f"not 1..120 once and in order: {after[:3]}...{after[-3:]}"
    assert after[checkpointed] == checkpointed + 1
    [generation] = site.generations("601.head")
    verify_generation(generation)  # a restore leaves the generation exactly as it was (restorable again)
    events = [e["event"] for e in site.log_events()]
    assert "restart.running" in events and "qalter.missing" in events
    # the pages, checked while CRIU restored the job stopped, were checked before it was let go
    assert events.index("restart.start") < events.index("restart.verified") < events.index("restart.running")
    [running] = [e for e in site.log_events() if e["event"] == "restart.running"]
    assert (running["pid"], running["restored_pid"], running["job_id"]) == (
        restart.pid,
        on_node[0],
        "601.head",
    )
    [ended] = [e for e in site.log_events() if e["event"] == "restart.ended"]
    assert (ended["pid"], ended["exit_status"]) == (restart.pid, 7)


def test_periodic_checkpoint_then_a_crash_with_output_that_grew(user_mode: Site) -> None:
    site = user_mode
    job = site.start_job("602.head", app_env={"COUNTER_LIMIT": "200", "COUNTER_EXIT": "3"})
    job.wait_count(10)
    before = job.count()
    args = site.torque_args(job)
    assert call_hook(args, site.config).returncode == 0
    after_hook = job.count()
    job.wait_count(after_hook + 20)  # the output file grows past its size in the image
    crash(job)
    crashed_at = job.counts()[-1]

    restart = start_restart(restart_args(job, args), site.config)
    assert restart.wait(timeout=90) == 3, restart.stderr.read() if restart.stderr else ""
    numbers = job.counts()
    assert numbers[:crashed_at] == list(range(1, crashed_at + 1)), "the output before the crash must stay"
    resumed = numbers[crashed_at:]
    assert before < resumed[0] <= after_hook + 1, (
        f"resumed at {resumed[0]}, checkpoint taken at {before}..{after_hook}"
    )
    assert resumed == list(range(resumed[0], 201)), "the restored application must append to its output"


def test_job_picks_the_newest_complete_generation_and_ignores_incoming(user_mode: Site) -> None:
    site = user_mode
    job = site.start_job("603.head", app_env={"COUNTER_LIMIT": "80"})
    for _ in range(2):
        assert call_hook(site.torque_args(job), site.config).returncode == 0
    _older, newest = site.generations("603.head")
    fake = newest.parent / ".incoming-zzzz"  # a copy that looks newer but was never published
    shutil.copytree(newest, fake)
    crash(job)

    restart = start_restart(["--job", "603.head"], site.config)
    assert restart.wait(timeout=90) == 0, restart.stderr.read() if restart.stderr else ""
    started = [e for e in site.log_events() if e["event"] == "restart.start"]
    assert started[-1]["path"] == str(newest)


def test_image_refuses_a_tampered_or_incomplete_generation(user_mode: Site) -> None:
    site = user_mode
    job = site.start_job("604.head")
    qhold_and_lose(site, job)
    [generation] = site.generations("604.head")
    manifest = verify_generation(generation)
    biggest = max(manifest["files"], key=lambda f: f["size"])
    victim = generation / biggest["path"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    written = job.output.read_bytes()
    restart = start_restart(["--image", generation], site.config)
    assert restart.wait(timeout=60) == 65
    assert restart.stderr is not None
    message = restart.stderr.read().decode()
    assert message.startswith("mom-restart: ") and biggest["path"] in message and "changed" in message
    # the memory pages are checked while CRIU restores the job stopped: the mismatch killed the
    # stopped tree before any of it ran (it printed nothing), and its namespace ended with it
    [failed] = [e for e in site.log_events() if e["event"] == "restart.verification_failed"]
    assert not job.processes() and not is_running(failed["killed"])
    assert job.output.read_bytes() == written, "the tampered job ran"
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))  # as it was

    # a file CRIU decides from (not memory) is checked before CRIU starts: it never runs on it
    core = next(f for f in manifest["files"] if f["path"].startswith("image/core-"))
    original = (generation / core["path"]).read_bytes()
    (generation / core["path"]).write_bytes(original[:-1] + bytes([original[-1] ^ 0x01]))
    starts = len([e for e in site.log_events() if e["event"] == "restart.start"])
    restart = start_restart(["--image", generation], site.config)
    assert restart.wait(timeout=60) == 65
    assert restart.stderr is not None and core["path"] in restart.stderr.read().decode()
    assert len([e for e in site.log_events() if e["event"] == "restart.start"]) == starts, "CRIU ran"
    (generation / core["path"]).write_bytes(original)

    victim.unlink()
    restart = start_restart(["--image", generation], site.config)
    assert restart.wait(timeout=60) == 65
    assert restart.stderr is not None and "missing" in restart.stderr.read().decode()
    (generation / "manifest.json").unlink()
    restart = start_restart(["--image", generation], site.config)
    assert restart.wait(timeout=60) == 65


def test_a_generation_an_older_version_recorded_with_sha256_still_restores(user_mode: Site) -> None:
    """Schema-3 manifests (each file's "sha256") from before BLAKE3: the generations already on a node
    restore after an upgrade, checked with sha256; one changed byte is still a refusal."""
    site = user_mode
    job = site.start_job("614.head", app_env={"COUNTER_LIMIT": "60"})
    job.wait_count(5)
    args, printed = qhold_and_lose(site, job, empty_output=True)
    checkpointed = numbers(printed)[-1]
    [generation] = site.generations("614.head")
    manifest = verify_generation(generation)

    def as_schema_3(entry: dict[str, Any]) -> dict[str, Any]:
        data = (generation / (entry.get("copy") or entry["path"])).read_bytes()
        rest = {k: v for k, v in entry.items() if k != "digest"}
        return {**rest, "sha256": hashlib.sha256(data).hexdigest()}

    old = {
        **manifest,
        "schema": 3,
        "files": [as_schema_3(f) for f in manifest["files"]],
        "kept": [as_schema_3(k) for k in manifest["kept"]],
    }
    (generation / "manifest.json").write_text(json.dumps(old))  # root's, 0600, as the hook left it
    restart = start_restart(restart_args(job, args), site.config)
    assert restart.wait(timeout=90) == 0, restart.stderr.read() if restart.stderr else ""
    assert job.counts() == list(range(1, 61)) and checkpointed < 60

    crash(job)
    biggest = max(old["files"], key=lambda f: f["size"])
    with open(generation / biggest["path"], "r+b") as fh:
        fh.seek(biggest["size"] // 2)
        byte = fh.read(1)
        fh.seek(biggest["size"] // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    restart = start_restart(restart_args(job, args), site.config)
    assert restart.wait(timeout=60) == 65
    assert restart.stderr is not None and "checksum mismatch" in restart.stderr.read().decode()
    assert not job.processes()


def test_sigterm_to_the_session_ends_the_restored_application(user_mode: Site) -> None:
    site = user_mode
    job = site.start_job("605.head")
    restored = [job.exec_pid(), job.app_pid()]  # CRIU gives them back their pids
    args, _ = qhold_and_lose(site, job)

    restart = start_restart(restart_args(job, args), site.config)
    restored = wait_restored(restart, restored)
    for pid in psutil.pids():  # qdel: SIGTERM to every process of the job's session
        with contextlib.suppress(ProcessLookupError):
            if os.getsid(pid) == restart.pid:
                os.kill(pid, signal.SIGTERM)  # (psutil would take a restored pid for a reused one)
    # mom-restart ends by the signal that ended the application: pbs_mom reports 256+15, as for any job
    assert restart.wait(timeout=30) == -signal.SIGTERM
    wait_not_running(restored, "restored processes survived the SIGTERM", timeout=10)


def test_an_application_that_ignores_sigterm_does_not_outlive_the_restart(user_mode: Site) -> None:
    """Issue 26 #3: a restored task that ignores SIGTERM outlived qdel: mom-restart passed the signal
    to the tree's root only and ended with it, and pbs_mom's SIGKILL skips root's processes and the
    restored task's old session. mom-restart now signals the whole tree and kills what is left of it
    after abort_grace_s."""
    site = user_mode
    site.configure(abort_grace_s=1, **{"backends.criu.run_as": "job-user"})
    job = site.start_job("613.head", app_env={"COUNTER_IGNORE_TERM": "1"})
    restored = [job.exec_pid(), job.app_pid()]
    args, _ = qhold_and_lose(site, job)
    restart = start_restart(restart_args(job, args), site.config)
    restored = wait_restored(restart, restored)
    counted = job.count()
    assert job.wait_count(counted + 3) > counted
    os.kill(restart.pid, signal.SIGTERM)  # pbs_mom's qdel reaches the task it started: mom-restart
    restart.wait(timeout=60)
    wait_not_running(restored, "restored processes outlived the restart", timeout=30)


def test_a_failed_restart_puts_back_what_the_job_printed_before_the_hold(user_mode: Site) -> None:
    """Issue 26 #2: a restart that failed (there: a PID still held) left the output files pbs_mom had
    re-created empty, and TORQUE delivered them so: the user lost what the job printed. Whatever
    fails, the output kept at the hold goes back first (here: a small image file damaged, 65, found
    before the output files are handed to the restorer), and TORQUE ends the job with that code."""
    from tests.torque import TorqueMom

    site = user_mode
    mom = TorqueMom(site)
    job = site.start_job("614.head")
    job.wait_count(5)
    args = mom.qhold(job)
    printed = job.output.read_text()
    mom.zombies_reaped()
    [generation] = site.generations("614.head")
    damaged = generation / "image" / "inventory.img"  # checked before anything is handed over
    with open(damaged, "r+b") as fh:  # the same size, other bytes: the digest check refuses it
        fh.write(b"\xff" * 4)
    restart = mom.release(job, args)  # qrls: the output files re-created empty first
    end = mom.ended(restart, job)
    assert end.exit_status == 65, "TORQUE records the restart script's code as the job's"
    assert printed and end.delivered == printed, "what the job printed before the hold was lost"
    assert [e for e in site.log_events() if e["event"] == "restart.output_put_back"]


def test_qrls_right_after_qhold_waits_for_the_applications_zombie(user_mode: Site) -> None:
    """Issue 26 #2: TORQUE's qrls right after qhold restarted the job while the killed application's
    zombie still held its PID (its host's init reaped it about a second later): mom-restart exited 75
    and TORQUE ended the job. The restore now waits for it, bounded, and goes on."""
    from tests.torque import TorqueMom

    site = user_mode
    mom = TorqueMom(site)
    job = site.start_job("615.head")
    restored = [job.exec_pid(), job.app_pid()]
    args = mom.qhold(job)
    if mom.zombie is None:
        pytest.skip("another process took the application's pid first")
    try:
        restart = mom.release(job, args)  # qrls at once: the zombie still holds the PID on the node
        wait_restored(restart, restored)  # the job has it again, in its own namespace
        counted = job.count()
        assert job.wait_count(counted + 3) > counted, "the restored job does not count on"
    finally:
        mom.zombies_reaped()
    assert mom.qdel(restart) == 256 + signal.SIGTERM


def test_a_job_ended_while_it_is_restored_never_runs(user_mode: Site) -> None:
    """pbs_mom's SIGTERM (a qdel) reaches mom-restart while CRIU restores the job stopped and its memory
    is being checked: the job is killed before it is let go, none of it is left, and mom-restart
    ends by that signal, as the job would have."""
    site = user_mode
    job = site.start_job("616.head", app_env={"TICKER_MIB": "384"}, app=TICKER, wait_s=60)
    args, printed = qhold_and_lose(site, job, empty_output=True)
    restart = start_restart(restart_args(job, args), site.config)
    deadline = time.monotonic() + 30
    while not [e for e in site.log_events() if e["event"] == "restart.start"]:
        assert time.monotonic() < deadline and restart.poll() is None, "the restore did not start"
        time.sleep(0.005)
    os.kill(restart.pid, signal.SIGTERM)  # CRIU is restoring 384 MiB, the pages are being hashed
    assert restart.wait(timeout=60) == -signal.SIGTERM
    # what the job had printed before the qhold is put back, and nothing more: it never ran
    assert job.output.read_text() == printed, "the job ran"
    [ended] = [e for e in site.log_events() if e["event"] == "restart.ended"]
    assert (ended["signal"], ended["before_it_ran"]) == (signal.SIGTERM, True)
    assert not [e for e in site.log_events() if e["event"] == "restart.running"]
    # the restored tree had other PIDs on the node than in its namespace: none of it is left, by the
    # PID the restart logged for its root or as any process of the job's user
    users = [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"].real == site.user.uid]
    wait_not_running([ended["restored_pid"], *users], "restored processes survived", timeout=10)


def test_next_checkpoint_of_a_restarted_job_with_the_old_session_id(user_mode: Site) -> None:
    site = user_mode
    job = site.start_job("606.head")
    restored = [job.exec_pid(), job.app_pid()]
    args, _ = qhold_and_lose(site, job)
    restart = start_restart(restart_args(job, args), site.config)
    wait_restored(restart, restored)
    try:
        # pbs_mom keeps passing the old, dead SESSION_ID
        again = call_hook(site.torque_args(job), site.config)
        assert again.returncode == 0, again.stderr
        newest = site.generations("606.head")[-1]
        manifest = verify_generation(newest)
        assert manifest["job"]["found_via"] == "restart-record"
        assert manifest["job"]["session_id"] == restart.pid
    finally:
        restart.terminate()
        restart.wait(timeout=30)
    # once the restart process has ended, the hook says clearly that the job is gone
    gone = call_hook(site.torque_args(job), site.config)
    assert gone.returncode == 66 and "not running on this node" in gone.stderr


def test_clear_failures_pid_in_use_unknown_job_missing_criu(user_mode: Site) -> None:
    site = user_mode
    site.configure(**without_namespaces())
    job = site.start_job("607.head")
    args = site.torque_args(job)
    assert call_hook(args, site.config).returncode == 0  # --leave-running: the PIDs stay taken
    restart = start_restart(restart_args(job, args), site.config)
    assert restart.wait(timeout=60) == 82
    assert restart.stderr is not None
    message = restart.stderr.read().decode()
    assert f"PID {job.exec_pid()} (now bash" in message and "in use" in message
    assert job.is_running()

    unknown = start_restart(["--job", "999.nowhere"], site.config)
    assert unknown.wait(timeout=60) == 66
    assert (
        unknown.stderr is not None
        and "999.nowhere has no complete checkpoint" in unknown.stderr.read().decode()
    )

    site.configure(**{"backends.criu.run_as": "job-user", "backends.criu.binary": "/nonexistent/criu"})
    missing = start_restart(["--job", "607.head"], site.config)
    assert missing.wait(timeout=60) == 69
    assert missing.stderr is not None and "/nonexistent/criu" in missing.stderr.read().decode()


def test_pbs_mom_deleted_the_checkpoint_dir_and_qalter_marks_the_job(user_mode: Site) -> None:
    site = user_mode
    qalter = site.standin("qalter", QALTER_LOG=str(site.base / "qalter.log"))
    site.configure(qalter=str(qalter), **{"backends.criu.run_as": "job-user"})
    job = site.start_job("608.head", app_env={"COUNTER_LIMIT": "60"})
    assert call_hook(site.torque_args(job), site.config).returncode == 0
    args, _ = qhold_and_lose(site, job)
    shutil.rmtree(str(args[4]))  # after a failed checkpoint pbs_mom removes the whole CHECKPOINT_DIR

    restart = start_restart(restart_args(job, args), site.config)
    assert restart.wait(timeout=90) == 0, restart.stderr.read() if restart.stderr else ""
    started = [e for e in site.log_events() if e["event"] == "restart.start"]
    assert started[-1]["path"] == str(site.generations("608.head")[-1])
    marks = [json.loads(line) for line in (site.base / "qalter.log").read_text().splitlines()]
    assert marks == [["-W", "checkpoint_restart_status=Successfully restarted job", "608.head"]]
    # a failed restart is marked too, with the reason
    (site.generations("608.head")[-1] / "manifest.json").unlink()
    failed = start_restart(restart_args(job, args), site.config)
    assert failed.wait(timeout=60) == 65
    marks = [json.loads(line) for line in (site.base / "qalter.log").read_text().splitlines()]
    assert marks[-1][0] == "-W" and marks[-1][2] == "608.head"
    assert marks[-1][1] == (
        "checkpoint_restart_status=Failed to restart job: exit 65 (the checkpoint failed verification; "
        "see the node's log)"
    )
    # Issue 25 #5: the pointer is the user's file; a "generation" holding an attribute list and
    # control characters was quoted into qalter -W, setting other attributes (Priority among them)
    hostile = "/x,checkpoint_restart_status=Successfully restarted job,comment=\x1b[2J\u202e,Priority=1023,x="
    folder = Path(str(args[4]))
    folder.mkdir()
    pointer = {"kind": "mom-checkpoint pointer", "schema": 1, "job_id": "608.head", "host": "node"}
    pointer |= {"generation": hostile, "number": 1, "created": "2026-12-06T00:00:00Z"}
    (folder / str(args[5])).write_text(json.dumps(pointer))
    forged = start_restart(restart_args(job, args), site.config)
    assert forged.wait(timeout=60) != 0
    marks = [json.loads(line) for line in (site.base / "qalter.log").read_text().splitlines()]
    assert marks[-1][:1] == ["-W"] and marks[-1][2] == "608.head"
    value = marks[-1][1].removeprefix("checkpoint_restart_status=")
    assert value.startswith("Failed to restart job: exit ") and "," not in value and "=" not in value
    assert not any(part in value for part in ("Priority", "comment", "/x", "\x1b", "\u202e"))


def test_root_refuses_a_generation_another_user_can_write(site: Site) -> None:
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("609.head")
    qhold_and_lose(site, job)
    [generation] = site.generations("609.head")
    generation.chmod(0o775)
    restart = start_restart(["--job", "609.head"], site.config)
    assert restart.wait(timeout=60) == 77
    assert (
        restart.stderr is not None and "can be written by group or others" in restart.stderr.read().decode()
    )
    generation.chmod(0o711)
    os.chown(generation / "manifest.json", 4242, 4242)  # a stranger's file in the generation
    restart = start_restart(["--job", "609.head"], site.config)
    assert restart.wait(timeout=60) == 77
    assert restart.stderr is not None and "belongs to uid 4242" in restart.stderr.read().decode()
    assert not job.processes()


def test_a_failed_restore_names_criu_s_first_error_and_its_log_is_kept(user_mode: Site) -> None:
    """Issue 13 #4: CRIU prefixes its restore errors with a pid; the line must carry the first real
    one, and the restore log must outlive the work folder, root's, named in the structured log. (A
    2 MiB input file the job holds, too big to be kept with the generation, deleted before the
    restart makes CRIU fail.)"""
    site = user_mode
    held = site.jobs_dir / "input.dat"
    held.write_bytes(os.urandom(2 << 20))
    held.chmod(0o644)
    job = site.start_job("606.head", app_env={"COUNTER_HOLD": str(held)})
    args, _ = qhold_and_lose(site, job)
    held.unlink()
    restart = start_restart(restart_args(job, args), site.config)
    assert restart.wait(timeout=60) == 80
    err = restart.stderr.read().decode() if restart.stderr else ""
    assert "criu restore failed (exit 1): Error (criu/" in err and "input.dat" in err, err
    [failed] = [e for e in site.log_events() if e["event"] == "restart.restore_failed"]
    kept = Path(failed["log"])
    st = kept.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600) and "Restoring FAILED" in kept.read_text()
    [refused] = [e for e in site.log_events() if e["event"] == "restart.refused"]
    assert refused["job_id"] == "606.head"


def test_an_ordinary_job_script_resumes_after_pbs_mom_deleted_it(user_mode: Site) -> None:
    """Issue 13 #1: the job script's shell keeps the script open (bash: fd 255) and pbs_mom deletes
    it when the job ends; the script is kept with the generation and handed back at its offset."""
    site = user_mode
    job = site.start_job("607.head", app_env={"COUNTER_LIMIT": "150"})
    script = job.output.parent / "607.head.SC"
    shell = job.exec_pid()
    args, _ = qhold_and_lose(site, job)
    [generation] = site.generations("607.head")
    manifest = json.loads((generation / "manifest.json").read_text())
    [kept] = [k for k in manifest["kept"] if k["path"] == str(script)]
    assert kept["role"] == "held" and (generation / kept["copy"]).read_bytes() == script.read_bytes()
    script.unlink()  # pbs_mom: the job has ended
    restart = start_restart(restart_args(job, args), site.config)
    # the copy it reads is the owner's (they may make it writable and grow it): never on the spool's
    # file system, where what they add would be space nobody counts (review of issue 25 #2)
    held: list[str] = []
    deadline = time.monotonic() + 30
    while not any(t.endswith(" (deleted)") for t in held):
        assert time.monotonic() < deadline and restart.poll() is None, "the job was not restored"
        on_node = restored_by(restart.pid).get(shell)  # the shell has its PID back, in its namespace
        with contextlib.suppress(OSError):
            held = [os.readlink(f"/proc/{on_node}/fd/{fd}") for fd in os.listdir(f"/proc/{on_node}/fd")]
        time.sleep(0.05)
    assert any(t.startswith("/dev/shm/") and t.endswith(" (deleted)") for t in held), held
    assert not any(t.startswith(str(site.spool)) for t in held), held
    assert restart.wait(timeout=90) == 0, restart.stderr.read() if restart.stderr else ""
    assert job.counts() == list(range(1, 151)), "the job did not count on to its end"
    assert not script.exists(), "the script was re-created at its path"


def test_qchkpt_qhold_qrls_qdel_of_an_ordinary_job_as_pbs_mom_runs_them(user_mode: Site) -> None:
    """Issue 13 #1, #3 and #8 under TorqueMom, which does what a real pbs_mom does around the hook: the
    job script deleted when the job ends, empty output files before the restart, qdel as SIGTERM
    then SIGKILL to the restarted job's session."""
    from tests.torque import TorqueMom

    site = user_mode
    mom = TorqueMom(site)
    job = site.start_job("620.head")
    assert mom.checkpoint(job)[0].returncode == 0  # qchkpt
    job.wait_count(job.count() + 5)
    result, args = mom.checkpoint(job, signal_number=15)  # qhold
    assert result.returncode == 0, result.stderr
    job.wait_ended()
    held_at = job.counts()[-1]
    mom.job_ended(job)
    restart = mom.release(job, args)  # qrls
    deadline = time.monotonic() + 60
    while len(job.counts()) < held_at + 10:
        assert time.monotonic() < deadline and restart.poll() is None, "the job did not count on"
        time.sleep(0.05)
    numbers = job.counts()
    assert numbers == list(range(1, len(numbers) + 1)), "the delivered output is not all of it, in order"
    # a second qhold and qrls: the job now holds the copy of its script a restore handed back, unlinked
    restored = [p.pid for p in psutil.Process(restart.pid).children(recursive=True)]
    result, args = mom.checkpoint(job, signal_number=15, session=restart.pid)
    assert result.returncode == 0, result.stderr
    restart.wait(timeout=30)  # the restart process ends with its job
    wait_until_gone(restored)  # reaped too: CRIU needs their PIDs
    held_at = job.counts()[-1]
    mom.job_ended(job)
    restart = mom.release(job, args)
    deadline = time.monotonic() + 60
    while len(job.counts()) < held_at + 10:
        refused = [e for e in site.log_events() if e["event"] == "restart.refused"]
        assert time.monotonic() < deadline and restart.poll() is None, f"not counting on: {refused}"
        time.sleep(0.05)
    numbers = job.counts()
    assert numbers == list(range(1, len(numbers) + 1)), "the delivered output is not all of it, in order"
    job_pids = list(restored_by(restart.pid).values())  # in its namespace, in a session of its own
    assert job_pids and not [p for p in job_pids if _in_session(p, restart.pid)]
    assert mom.qdel(restart) == 256 + signal.SIGTERM  # as TORQUE reports any killed job
    deadline = time.monotonic() + 10
    candidates = {*job_pids, *psutil.pids()}
    while left := [p for p in candidates if (p in job_pids or _in_session(p, restart.pid)) and is_running(p)]:
        assert time.monotonic() < deadline, f"{left} of the restarted job outlived qdel"
        time.sleep(0.05)


def _in_session(pid: int, session: int) -> bool:
    try:
        return os.getsid(pid) == session
    except ProcessLookupError:
        return False

"""psnc and blcr backends through the installed hook, with stand-ins honouring the real command lines."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path

from tests.helpers import (
    MOM_ENV,
    Site,
    call_direct,
    call_hook,
    crash,
    installed,
    kill_session,
    run_python,
    start_restart,
    verify_generation,
)


def test_psnc_runs_the_seeds_exact_command_line(site: Site) -> None:
    site.configure(backend="psnc", **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))})
    job = site.start_job("401.head")
    exec_pid = job.exec_pid()

    result = call_hook([job.session_id, job.job_id], site.config)

    assert result.returncode == 0, result.stderr
    [call] = site.standin_calls()
    [generation] = site.generations("401.head")
    assert call["argv"][1:5] == ["-q", "-p", str(exec_pid), "-od"]
    incoming_image = call["argv"][5]
    assert incoming_image.startswith(f"{generation.parent}/.incoming-") and incoming_image.endswith("/image")
    assert call["uid"] == 0
    manifest = verify_generation(generation)
    assert {f["path"] for f in manifest["files"]} == {f"image/ckpt.{exec_pid}", f"image/ckpt.{exec_pid}.meta"}
    image = json.loads((generation / "image" / f"ckpt.{exec_pid}").read_text())
    assert image["pid"] == exec_pid
    assert manifest["backend"]["name"] == "psnc"
    assert job.is_running()


def test_psnc_as_the_job_user_and_abort_ends_the_job_after_publishing(site: Site) -> None:
    site.configure(
        backend="psnc",
        **{"backends.psnc.chkpnt": str(site.standin("chkpnt")), "backends.psnc.run_as": "job-user"},
    )
    job = site.start_job("402.head")

    result = call_hook(site.torque_args(job, signal_number=15), site.config)

    assert result.returncode == 0, result.stderr
    [call] = site.standin_calls()
    assert call["uid"] == site.user.uid and call["euid"] == site.user.uid
    job.wait_ended()
    [generation] = site.generations("402.head")
    verify_generation(generation)
    for path in (generation / "image").iterdir():
        assert path.stat().st_uid == site.user.uid


def test_blcr_command_line_periodic_and_abort(site: Site) -> None:
    site.configure(backend="blcr", **{"backends.blcr.cr_checkpoint": str(site.standin("cr_checkpoint"))})
    job = site.start_job("403.head")
    exec_pid = job.exec_pid()

    periodic = call_hook(site.torque_args(job), site.config)
    assert periodic.returncode == 0, periodic.stderr
    assert job.is_running()
    abort = call_hook(site.torque_args(job, signal_number=15), site.config)
    assert abort.returncode == 0, abort.stderr
    job.wait_ended()

    first, second = site.standin_calls()
    generations = site.generations("403.head")
    assert first["argv"][1:4] == ["--tree", str(exec_pid), "--file"]
    assert first["argv"][4].endswith(f"/image/context.{exec_pid}")
    assert second["argv"][1:6] == ["--signal", "15", "--tree", str(exec_pid), "--file"]
    assert [g.name[:6] for g in generations] == ["000001", "000002"]
    manifest = verify_generation(generations[-1])
    assert manifest["backend"]["ended_job"] is True
    assert [f["path"] for f in manifest["files"]] == [f"image/context.{exec_pid}"]


def test_psnc_restore_runs_resume_with_the_seeds_command_line(site: Site) -> None:
    site.configure(
        backend="psnc",
        **{
            "backends.psnc.chkpnt": str(site.standin("chkpnt")),
            "backends.psnc.resume": str(site.standin("resume")),
        },
    )
    job = site.start_job("404.head", app_env={"COUNTER_LIMIT": "40", "COUNTER_EXIT": "4"})
    assert call_hook(site.torque_args(job, signal_number=15), site.config).returncode == 0
    job.wait_ended()
    crash(job)
    [generation] = site.generations("404.head")
    workdir = site.jobs_dir / "404.head"

    out = site.base / "restart.out"
    with open(out, "wb") as fh:
        restart = start_restart(["--job", "404.head", "--cwd", str(workdir)], site.config, stdout=fh)
        assert restart.wait(timeout=60) == 4, restart.stderr.read() if restart.stderr else ""
    calls = [c for c in site.standin_calls() if c["prog"] == "resume"]
    assert [c["argv"][1:] for c in calls] == [
        ["-drp", "-cwd", str(workdir), "-od", str(generation / "image")]
    ]
    assert out.read_text().split()[-1] == "40"  # the program ran (the stand-in starts it over) to its end


def test_blcr_restore_runs_cr_restart_on_the_context_file(site: Site) -> None:
    site.configure(
        backend="blcr",
        **{
            "backends.blcr.cr_checkpoint": str(site.standin("cr_checkpoint")),
            "backends.blcr.cr_restart": str(site.standin("cr_restart")),
        },
    )
    job = site.start_job("405.head", app_env={"COUNTER_LIMIT": "30", "COUNTER_EXIT": "6"})
    exec_pid = job.exec_pid()
    args = site.torque_args(job, signal_number=15)
    assert call_hook(args, site.config).returncode == 0
    job.wait_ended()
    crash(job)
    [generation] = site.generations("405.head")

    restart = start_restart(
        [job.session_id, job.job_id, site.user.name, site.user.name, args[4], args[5]], site.config
    )
    assert restart.wait(timeout=60) == 6, restart.stderr.read() if restart.stderr else ""
    calls = [c for c in site.standin_calls() if c["prog"] == "cr_restart"]
    assert [c["argv"][1:] for c in calls] == [[str(generation / "image" / f"context.{exec_pid}")]]


def test_a_restart_killed_with_9_leaves_its_work_folder_for_the_next_to_remove(site: Site) -> None:
    site.configure(
        backend="psnc",
        **{
            "backends.psnc.chkpnt": str(site.standin("chkpnt")),
            "backends.psnc.resume": str(site.standin("resume")),
        },
    )
    job = site.start_job("405.head")
    assert call_hook(site.torque_args(job, signal_number=15), site.config).returncode == 0
    job.wait_ended()
    crash(job)
    restarts = site.spool / ".restarts"

    def restart_and_wait() -> tuple[subprocess.Popen[bytes], Path]:
        restart = start_restart(["--job", "405.head"], site.config)
        deadline = time.monotonic() + 30
        while not [c for c in site.standin_calls() if c["prog"] == "resume" and c["ppid"] == restart.pid]:
            assert time.monotonic() < deadline and restart.poll() is None, "no restore started"
            time.sleep(0.05)
        [workdir] = [p for p in restarts.iterdir() if f".{restart.pid}." in p.name]
        return restart, workdir

    first, first_dir = restart_and_wait()
    assert stat.S_IMODE(restarts.stat().st_mode) == 0o700 and stat.S_IMODE(first_dir.stat().st_mode) == 0o700
    restorer = (first_dir / "restorer").stat()  # where the restorer writes: private to it
    assert (restorer.st_uid, stat.S_IMODE(restorer.st_mode)) == (0, 0o700)
    kill_session(first.pid)  # pbs_mom's qdel of an unresponsive job: SIGKILL, no clean-up
    first.wait(timeout=30)
    assert first_dir.exists()
    second, second_dir = restart_and_wait()
    try:
        assert not first_dir.exists(), "the dead restart's work folder was not removed"
        assert second_dir.exists()
    finally:
        kill_session(second.pid)
        second.wait(timeout=30)


def test_a_pruned_generation_leaves_the_names_at_once_and_the_disk_after_the_call(site: Site) -> None:
    """pbs_mom does not wait for a large image's blocks to be freed: the call takes the pruned generation
    out of the generation names (one rename) and a detached process of its own removes the files."""
    site.configure(backend="psnc", keep=1, **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))})
    job = site.start_job("409.head")
    assert call_hook(site.torque_args(job), site.config).returncode == 0
    [first] = site.generations("409.head")
    for i in range(30_000):  # a generation that takes a while to remove (as a large image's blocks do)
        (first / "image" / f"many-{i}").touch()
    result = call_hook(site.torque_args(job), site.config)
    assert result.returncode == 0, result.stderr
    [second] = site.generations("409.head")  # at once: only the new one has a generation name
    assert second != first and not first.exists()
    assert list(first.parent.glob(".pruning-*")), "the call waited for the removal"
    [pruned] = [e for e in site.log_events() if e["event"] == "generation.pruned"]
    assert pruned["path"] == str(first)
    assert site.pruning_left() == [], "the pruned generation's files were not removed"  # soon after
    assert sorted(p.name for p in first.parent.iterdir()) == [second.name]
    verify_generation(second)


# Runs the hook's main() as pbs_mom's call does, and notes which modules were loaded when the
# checkpointer was started (the runner's first program) and when the call ended.
LOADED_AT_START = """
import json, sys
import mom_checkpoint.platform.environment as environment
seen = {}
original = environment.Runner.run
def run(self, argv, **kwargs):
    seen.setdefault("at_start", sorted(sys.modules))
    return original(self, argv, **kwargs)
environment.Runner.run = run
from mom_checkpoint.cli.checkpoint import main
status = main(sys.argv[2:])
seen["at_end"] = sorted(sys.modules)
with open(sys.argv[1], "w") as out:
    json.dump(seen, out)
sys.exit(status)
"""


def test_an_accepted_call_imports_the_post_dump_modules_only_once_the_checkpointer_runs(site: Site) -> None:
    from mom_checkpoint.commands.checkpoint.meanwhile import AFTER_THE_DUMP

    site.configure(backend="psnc", keep=1, **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))})
    job = site.start_job("409.head")
    report = site.base / "modules.json"
    proc = run_python(LOADED_AT_START, [report, *site.torque_args(job)], site.config)
    assert proc.returncode == 0, proc.stderr
    [generation] = site.generations("409.head")
    verify_generation(generation)
    seen = json.loads(report.read_text())
    never = {"argparse", "tempfile", "mom_checkpoint.image.staging", "mom_checkpoint.image.criu_images"}
    assert sorted(set(seen["at_start"]) & (set(AFTER_THE_DUMP) | never)) == []
    assert set(AFTER_THE_DUMP) <= set(seen["at_end"])
    assert sorted(set(seen["at_end"]) & never) == []


def test_a_summary_that_cannot_be_written_is_an_io_error_and_the_checkpoint_stays(site: Site) -> None:
    """The hook's last output is flushed just before it ends (without the interpreter's teardown): if
    that fails (stdout on a full device), the status says so, as Python's own exit would, and the
    checkpoint already published stays."""
    site.configure(backend="psnc", **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))})
    job = site.start_job("410.head")
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [str(installed("mom-checkpoint")), *[str(a) for a in site.torque_args(job)]],
            env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)},
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert proc.returncode == 74, proc.stderr
    [generation] = site.generations("410.head")
    verify_generation(generation)


def test_two_restores_of_one_job_never_run_at_once(site: Site) -> None:
    """Review of issue 25 #3: each restore stages a copy of the image (all of it for psnc and blcr in
    job-user mode), so parallel restores of one job (sudo mom-restart --own, N times) put N copies on
    the spool. A restore holds the job's restore lock until the job is let go; a second one is busy
    (75) at once, naming the first. The job's checkpoints never wait for it (a lock of its own)."""
    import filelock

    site.configure(
        backend="psnc",
        **{
            "backends.psnc.chkpnt": str(site.standin("chkpnt")),
            "backends.psnc.resume": str(site.standin("resume")),
        },
    )
    job = site.start_job("413.head", app_env={"COUNTER_LIMIT": "20"})
    assert call_hook(site.torque_args(job, signal_number=15), site.config).returncode == 0
    job.wait_ended()
    crash(job)
    lock = site.spool / ".locks" / f"job-restore-torque.{site.user.uid}.413.head.lock"
    held = filelock.FileLock(str(lock), timeout=0)
    held.acquire()  # a restore of the job in progress
    try:
        busy = call_direct(["--job", "413.head"], site.config, program="mom-restart")
        assert busy.returncode == 75 and "another restore of job 413.head" in busy.stderr, busy.stderr
        other = site.start_job("414.head", app_env={"COUNTER_LIMIT": "200"})
        assert call_hook(site.torque_args(other), site.config).returncode == 0  # checkpoints go on
    finally:
        held.release()
    restored = call_direct(["--job", "413.head"], site.config, program="mom-restart")
    assert restored.returncode == 0, restored.stderr


def test_what_root_makes_does_not_depend_on_the_callers_umask(site: Site) -> None:
    """Issue 26 #1: TORQUE's jobs, and sudo from them, run with umask 077, pbs_mom with 022: every
    program starts with its own umask, so the spool and the log come out as the modes say."""
    spool = site.base / "fresh-spool"
    site.configure(
        backend="psnc", spool_dir=str(spool), **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))}
    )
    job = site.start_job("415.head")
    args = [str(a) for a in site.torque_args(job)]
    result = subprocess.run(
        [str(installed("mom-checkpoint")), *args],
        env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)},
        capture_output=True,
        text=True,
        timeout=120,
        umask=0o077,
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(spool.stat().st_mode) == 0o711
    assert stat.S_IMODE(site.log.stat().st_mode) == 0o640

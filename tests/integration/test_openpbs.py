"""OpenPBS: mom-checkpoint as the $action checkpoint, checkpoint_abort and restart scripts, driven the way
OpenPBS's pbs_mom drives them (tests/openpbs.py: closed stdio, no PATH, per-task %path, SIGKILL of the
script alone at the $action timeout, transmogrified restart)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import (
    Job,
    Site,
    User,
    crash,
    installed,
    is_running,
    numbers,
    seen_as,
    verify_generation,
    wait_until_gone,
)
from tests.openpbs import Mom, NotRun, Task

ROOT = Path(__file__).resolve().parents[2]


def mom_config(timeout: int = 660, transmogrify: bool = True) -> str:
    text = (ROOT / "packaging" / "openpbs-mom_priv-config").read_text()
    text = text.replace("/usr/local/sbin/mom-checkpoint", str(installed("mom-checkpoint")))
    text = text.replace(" 660 !", f" {timeout} !")
    return text if transmogrify else text.replace("$restart_transmogrify true", "")


def make_mom(site: Site, timeout: int = 660, transmogrify: bool = True) -> Mom:
    checkpoint_path = site.base / "pbs" / "checkpoint"
    checkpoint_path.mkdir(parents=True, exist_ok=True)
    checkpoint_path.chmod(0o700)  # OpenPBS wants its checkpoint folder root's 0700
    mom_log = site.base / "mom.log"
    mom_log.touch()
    return Mom(mom_config(timeout, transmogrify), checkpoint_path, site.config, mom_log)


def configure(site: Site, **keys: object) -> None:
    roots = {"pbs_checkpoint_roots": [str(site.base / "pbs" / "checkpoint")]}
    site.configure(**roots, **keys)  # type: ignore[arg-type]


def psnc(site: Site, **standin_env: str) -> dict[str, object]:
    return {"backend": "psnc", "backends.psnc.chkpnt": str(site.standin("chkpnt", **standin_env))}


def counts(path: Path) -> list[int]:
    return numbers(path.read_text())


def events(site: Site, name: str) -> list[dict[str, object]]:
    return [e for e in site.log_events() if e.get("event") == name]


@pytest.mark.usefixtures("criu")
def test_checkpoint_abort_and_restart_as_openpbs_drives_them(site: Site) -> None:
    configure(site, **{"backends.criu.run_as": "job-user"})
    mom = make_mom(site)
    job = site.start_job("31.vm", app_env={"COUNTER_LIMIT": "300", "COUNTER_EXIT": "3"})
    restored = [job.exec_pid(), job.app_pid()]
    task = Task(job, "31.vm")

    periodic = mom.checkpoint(task)
    assert (periodic.status, periodic.killed, periodic.marker_made) == (0, False, False), site.log_events()[
        -1:
    ]
    pointer = json.loads(periodic.path.read_text())
    assert periodic.path.name == "00000001" and pointer["job_id"] == "31.vm"
    [first] = site.generations("31.vm")
    assert pointer["generation"] == str(first)
    verify_generation(first)
    assert job.wait_count(job.count() + 3) and job.is_running()
    assert (site.base / "mom.log").stat().st_size == 0, "the tool wrote into MOM's own log (fd 3)"

    held = mom.checkpoint(task, abort=True)  # qhold
    assert held.status == 0 and held.path.exists() and not held.marker_made
    job.wait_ended()
    checkpointed = counts(job.output)[-1]
    assert len(site.generations("31.vm")) == 2
    crash(job)

    # qrls: MOM runs the restart script as the task's new top process, %sid the old one negated
    restart = mom.start_restart(task, old_sid=job.session_id)
    deadline = time.monotonic() + 30
    while None in (on_node := [seen_as(restart, pid) for pid in restored]):  # its PIDs, in its namespace
        assert time.monotonic() < deadline, f"not restored: {events(site, 'restart.refused')}"
        time.sleep(0.05)
    # one session of its own in the namespace; the task's session holds the restart and the holder
    sessions = {os.getsid(pid) for pid in on_node if pid is not None}
    assert len(sessions) == 1 and restart not in sessions
    # the next checkpoint of the restarted task: MOM passes the task's session, the restart process
    again = mom.checkpoint(Task(job, "31.vm", session_id=restart))
    assert again.status == 0, events(site, "checkpoint.refused")
    newest = site.generations("31.vm")[-1]
    assert verify_generation(newest)["job"]["found_via"] == "restart-record"
    _, status = os.waitpid(restart, 0)
    assert os.waitstatus_to_exitcode(status) == 3, "the job's exit status is the application's"
    after = counts(job.output)
    assert after[after.index(checkpointed) + 1 :] == list(range(checkpointed + 1, 301))
    [start] = events(site, "restart.start")
    assert start["convention"] == "openpbs" and start["argv"] == [
        "--pbs", "restart", "31.vm", f"-{job.session_id}", "1", site.user.name, str(held.path)
    ]  # fmt: skip


def test_a_failed_checkpoint_leaves_nothing_at_path_and_our_images_survive(site: Site) -> None:
    configure(site, **psnc(site))
    mom = make_mom(site)
    job = site.start_job("32.vm")
    task = Task(job, "32.vm")
    assert mom.checkpoint(task).status == 0
    [good] = site.generations("32.vm")

    configure(site, **psnc(site, STANDIN_FAIL="5"))
    failed = mom.checkpoint(task)
    assert failed.status == 80 and not failed.believes_checkpointed
    assert not (mom.checkpoint_path / "32.vm.CK").exists(), "MOM deletes its folder, the old one too"
    assert site.generations("32.vm") == [good]
    verify_generation(good)
    [refusal] = events(site, "checkpoint.refused")
    assert "psnc failed (exit 5)" in str(refusal["error"])

    held = mom.checkpoint(task, abort=True)  # a failed qhold must leave no file at %path
    assert held.status == 80 and not held.path.exists() and not held.believes_checkpointed
    assert job.is_running(), "a failed checkpoint_abort must never end the task"


def test_the_tools_timeout_ends_a_hung_checkpointer_before_moms(site: Site) -> None:
    configure(site, timeout_s=1, **psnc(site, STANDIN_HANG="60"))
    mom = make_mom(site, timeout=20)
    job = site.start_job("33.vm")
    outcome = mom.checkpoint(Task(job, "33.vm"), abort=True)
    assert outcome.status == 81 and not outcome.killed and not outcome.path.exists()
    hung = [c["pid"] for c in site.standin_calls()]
    wait_until_gone(hung, timeout=10)
    assert not any(psutil.pid_exists(pid) for pid in hung), "the hung checkpointer survived"
    assert job.is_running()


def test_when_mom_kills_the_script_the_next_call_ends_the_orphaned_checkpointer(site: Site) -> None:
    configure(site, timeout_s=60, **psnc(site, STANDIN_HANG="60"))
    mom = make_mom(site, timeout=2)  # misconfigured: shorter than timeout_s (doctor says so)
    job = site.start_job("34.vm")
    task = Task(job, "34.vm")
    killed = mom.checkpoint(task)
    assert killed.killed and killed.status is None
    [orphan] = [c["pid"] for c in site.standin_calls()]
    assert psutil.pid_exists(orphan), "pbs_mom kills the script alone: its checkpointer lives on"
    configure(site, **psnc(site))
    assert mom.checkpoint(task).status == 0
    wait_until_gone([orphan], timeout=10)
    assert not psutil.pid_exists(orphan), "the next checkpoint must stop the orphaned checkpointer"
    assert [e for e in site.log_events() if e.get("event") == "incoming.stale_removed"]
    assert site.incoming() == [] and len(site.generations("34.vm")) == 1


def test_each_task_has_its_own_path_and_generations(site: Site) -> None:
    configure(site, **psnc(site))
    mom = make_mom(site)
    first, second = site.start_job("35.vm"), site.start_job("35.vm-task2")
    for task in (Task(first, "35.vm", 1), Task(second, "35.vm", 2)):
        outcome = mom.checkpoint(task)
        assert outcome.status == 0 and outcome.path.name == f"{task.task_id:08X}"
        assert json.loads(outcome.path.read_text())["job_id"] == (
            "35.vm" if task.task_id == 1 else "35.vm+task2"
        )
    assert len(site.generations("35.vm")) == 1 and len(site.generations("35.vm+task2")) == 1


def test_mom_refuses_scripts_and_words_as_openpbs_does(site: Site, tmp_path: Path) -> None:
    configure(site, **psnc(site))
    job = site.start_job("36.vm")
    copy = site.base / "mom-checkpoint-copy"
    shutil.copy(installed("mom-checkpoint"), copy)
    copy.chmod(0o777)
    mom = make_mom(site)
    mom.actions["checkpoint"] = (600, str(copy), mom.actions["checkpoint"][2])
    with pytest.raises(NotRun, match="not root's"):
        mom.checkpoint(Task(job, "36.vm"))
    mom = make_mom(site)
    timeout, script, words = mom.actions["checkpoint"]
    mom.actions["checkpoint"] = (timeout, script, [*words, "%cookie"])
    with pytest.raises(NotRun, match="unknown %cookie"):
        mom.checkpoint(Task(job, "36.vm"))


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["checkpoint", "36.vm", "4711", "1", "momtest"], "7 words"),
        (["suspend", "36.vm", "4711", "1", "momtest", "/x/36.vm.CK/00000001"], "ACTION must be one of"),
        (["checkpoint", "36.vm", "4711", "1", "momtest", "/x/36.vm.CK/00000002"], "not this task's"),
        (["checkpoint", "36.vm", "4711", "1", "momtest", "/x/37.vm.CK/00000001"], "not this task's"),
        (["checkpoint", "../x", "4711", "1", "momtest", "/x/../x.CK/00000001"], "not safe"),
        (["checkpoint", "36.vm", "abc", "1", "momtest", "/x/36.vm.CK/00000001"], "%sid"),
        (["checkpoint", "36.vm", "4711", "0", "momtest", "/x/36.vm.CK/00000000"], "%taskid"),
    ],
)
def test_bad_pbs_words_are_refused_with_nothing_written(site: Site, words: list[str], message: str) -> None:
    configure(site)
    proc = subprocess.run(
        [str(installed("mom-checkpoint")), "--pbs", *words],
        env={"MOM_CHECKPOINT_CONFIG": str(site.config)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 64 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not any(site.spool.iterdir())


def test_a_path_outside_pbs_checkpoint_roots_is_refused(site: Site) -> None:
    configure(site, **psnc(site))
    job = site.start_job("37.vm")
    mom = make_mom(site)
    mom.checkpoint_path = site.torque_root  # TORQUE's folder is not an OpenPBS root
    outcome = mom.checkpoint(Task(job, "37.vm"))
    assert outcome.status == 77 and not outcome.path.exists()
    [refusal] = events(site, "checkpoint.refused")
    assert "pbs_checkpoint_roots" in str(refusal["error"])


def test_doctor_checks_the_action_lines_timeouts_permissions_and_transmogrify(
    site: Site, root_user: User
) -> None:
    configure(site, backend="psnc", **{"backends.psnc.chkpnt": "/bin/true"})
    make_mom(site)
    mom_priv = site.base / "mom_priv-config"
    program = installed("mom-checkpoint")

    def doctor() -> str:
        proc = subprocess.run(
            [str(program), "doctor", "--mom-config", str(mom_priv)],
            env={"PATH": "/bin:/usr/bin", "MOM_CHECKPOINT_CONFIG": str(site.config)},
            capture_output=True,
            text=True,
        )
        return proc.stdout

    mom_priv.write_text(mom_config())
    good = doctor()
    for name in ("checkpoint", "checkpoint_abort", "restart"):
        assert f"[ok  ] $action {name}: " in good, good
    assert "[ok  ] $restart_transmogrify" in good and "[ok  ] $action script" in good
    assert "[ok  ] checkpoint root" in good and "[ok  ] $action checkpoint timeout" in good

    mom_priv.write_text(mom_config(timeout=100, transmogrify=False))  # the site's timeout_s is 120
    bad = doctor()
    assert "[FAIL] $restart_transmogrify" in bad and "add '$restart_transmogrify true'" in bad
    assert "[FAIL] $action checkpoint timeout" in bad and "at least 180 s" in bad
    mom_priv.write_text(mom_config().replace("%login %path", "%path"))
    wrong = doctor()
    assert "[FAIL] $action checkpoint:" in wrong
    # what doctor suggests passes doctor (issue 14 #2: it suggested 600, then failed 600 for 660)
    fixes = [line for line in wrong.splitlines() if "fix: set '$action checkpoint " in line]
    suggested = fixes[0].split("set '", 1)[1].split("';", 1)[0]
    assert suggested.startswith("$action checkpoint 180 !"), suggested
    lines = [
        suggested if line.startswith("$action checkpoint ") else line for line in mom_config().splitlines()
    ]
    mom_priv.write_text("\n".join(lines) + "\n")
    followed = doctor()
    assert "[ok  ] $action checkpoint: " in followed and "[ok  ] $action checkpoint timeout" in followed


def doctor_of(site: Site, *mom_configs: Path) -> subprocess.CompletedProcess[str]:
    options = [word for path in mom_configs for word in ("--mom-config", str(path))]
    return subprocess.run(
        [str(installed("mom-checkpoint")), "doctor", *options],
        env={"PATH": "/bin:/usr/bin", "MOM_CHECKPOINT_CONFIG": str(site.config)},
        capture_output=True,
        text=True,
    )


def test_doctor_accepts_a_sites_wrapper_on_an_action_line_held_to_pbs_moms_rules(site: Site) -> None:
    """Issue 26 #6: TORQUE's check accepted a site's wrapper, OpenPBS's failed it. A wrapper passes
    when pbs_mom would run it (root's, not world-writable), it runs mom-checkpoint, and its line
    ends with the job's values; each of those broken fails with its fix."""
    configure(site, backend="psnc", **{"backends.psnc.chkpnt": "/bin/true"})
    make_mom(site)
    mom_priv = site.base / "mom_priv-config"
    wrapper = site.base / "site-pbs-checkpoint"
    wrapper.write_text(
        f'#!/bin/sh\nlogger "checkpoint $1"\nexec {installed("mom-checkpoint")} --pbs checkpoint "$@"\n'
    )
    wrapper.chmod(0o755)
    ours = f"!{installed('mom-checkpoint')} --pbs checkpoint %jobid"
    mom_priv.write_text(mom_config(timeout=180).replace(ours, f"!{wrapper} %jobid"))
    good = doctor_of(site, mom_priv)
    assert f"[ok  ] $action checkpoint: {mom_priv}: $action checkpoint 180 !{wrapper} %jobid" in good.stdout
    assert "(a site's wrapper that runs mom-checkpoint --pbs checkpoint)" in good.stdout
    assert f"[ok  ] $action script: {wrapper}: root's" in good.stdout, good.stdout
    assert "[ok  ] $action checkpoint timeout" in good.stdout
    assert not [line for line in good.stdout.splitlines() if line.startswith("[FAIL] $")], good.stdout

    wrapper.chmod(0o757)  # pbs_mom would refuse to run it
    refused = doctor_of(site, mom_priv)
    assert f"[FAIL] $action script: {wrapper} has mode 757" in refused.stdout, refused.stdout
    wrapper.chmod(0o755)
    mom_priv.write_text(
        mom_config(timeout=180).replace(ours, f"!{wrapper} %jobid").replace("%login %path", "%login")
    )
    short = doctor_of(site, mom_priv)
    assert (
        "[FAIL] $action checkpoint:" in short.stdout
        and "a site's wrapper: end its line with %jobid" in short.stdout
    )
    other = site.base / "other-wrapper"
    other.write_text("#!/bin/sh\nexec /bin/true\n")
    other.chmod(0o755)
    mom_priv.write_text(mom_config(timeout=180).replace(ours, f"!{other} %jobid"))
    unrelated = doctor_of(site, mom_priv)
    assert "[FAIL] $action checkpoint:" in unrelated.stdout and short.returncode == unrelated.returncode == 1


def test_doctor_checks_both_pbs_moms_on_a_node_that_has_both(site: Site) -> None:
    """Issue 26 #6: with TORQUE's and OpenPBS's configs on one node, doctor checks each, and names
    whose each check is; a fault in either fails it."""
    configure(site, backend="psnc", **{"backends.psnc.chkpnt": "/bin/true"})
    make_mom(site)
    programs = installed("mom-checkpoint").parent
    torque = site.base / "torque" / "mom_priv" / "config"
    torque.parent.mkdir(parents=True)
    torque.write_text(f"$pbsserver head\n$checkpoint_script {programs}/mom-checkpoint\n")
    openpbs = site.base / "pbs" / "mom_priv" / "config"
    openpbs.parent.mkdir(parents=True)
    openpbs.write_text(mom_config(timeout=180))
    both = doctor_of(site, torque, openpbs)
    assert both.returncode == 1, both.stdout
    assert (
        "[FAIL] TORQUE $restart_script:" in both.stdout and "[ok  ] TORQUE $checkpoint_script" in both.stdout
    )
    for name in ("checkpoint", "checkpoint_abort", "restart"):
        assert f"[ok  ] OpenPBS $action {name}: " in both.stdout, both.stdout
    assert "[ok  ] OpenPBS $restart_transmogrify" in both.stdout
    assert both.stdout.count("[ok  ] config:") == 1, "the node's own checks once"


def test_a_task_that_is_its_own_session_leader_restarts_and_ends_with_its_task(site: Site) -> None:
    """Issue 14 #1: a job's second task started with `pbsdsh -o` runs its application as the leader of
    its own session, and CRIU gives a restored session leader its old session back. Its next
    checkpoint (MOM passes the restart process's session) must find it, and when MOM kills that
    session (qdel, the task's end) the application must not outlive it."""
    configure(site, **{"backends.criu.run_as": "job-user"})
    mom = make_mom(site)
    output = site.jobs_dir / "41.vm.task2.OU"
    task2 = Task(_leader_task(site, "41.vm", output, limit=4000), "41.vm", task_id=2)
    leader = task2.job.leader
    deadline = time.monotonic() + 30
    while len(counts(output)) < 3:
        assert time.monotonic() < deadline, "task 2 does not count"
        time.sleep(0.05)
    held = mom.checkpoint(task2, abort=True)
    assert held.status == 0, events(site, "checkpoint.refused")
    leader.wait(timeout=30)

    restart = mom.start_restart(task2, old_sid=leader.pid)
    deadline = time.monotonic() + 30
    while (root := seen_as(restart, leader.pid)) is None or os.getsid(root) != root:
        assert time.monotonic() < deadline, f"not restored: {events(site, 'restart.refused')}"
        time.sleep(0.05)
    assert os.getsid(root) == root != os.getsid(restart)  # its own session, as CRIU restores it
    again = mom.checkpoint(Task(task2.job, "41.vm", task_id=2, session_id=restart))
    assert again.status == 0, events(site, "checkpoint.refused")
    os.killpg(restart, signal.SIGKILL)  # MOM ends the task: its session, the restart process's
    os.waitpid(restart, 0)
    deadline = time.monotonic() + 10
    while is_running(root):
        assert time.monotonic() < deadline, "the restored application outlived its task"
        time.sleep(0.05)


def _leader_task(
    site: Site, job_id: str, output: Path, limit: int = 100000, ignore_term: bool = False
) -> Job:
    """A task whose application leads its own session (pbsdsh -o), counting into ``output``; with
    ``ignore_term``, an application that ignores SIGTERM."""
    with open(output, "wb") as out:
        os.fchown(out.fileno(), site.user.uid, site.user.gid)
        leader = subprocess.Popen(
            ["/usr/bin/python3", str(Path(__file__).parents[1] / "apps" / "counter.py")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=site.jobs_dir,
            user=site.user.uid, group=site.user.gid, extra_groups=[], umask=0o077, start_new_session=True,
            env={"PATH": "/usr/bin:/bin", "COUNTER_LIMIT": str(limit),
                 "COUNTER_IGNORE_TERM": "1" if ignore_term else "0"},
        )  # fmt: skip
    return Job(job_id, leader, output, site.user)


def test_a_two_task_job_through_two_restarts_and_a_qdel_leaves_nothing(site: Site) -> None:
    """Issue 14 #1: MOM's calls for a 2-task job (task 2 started with pbsdsh -o): qhold, qrls, a
    periodic checkpoint of each restarted task, qhold and qrls again, qdel; no process of the job is
    left, and each task counted on from where it was held. Issue 26 #3: task 2 ignores SIGTERM, and
    MOM never SIGKILLs it (its restored application sits in its old session, its restart process is
    root's): the restart process ends it itself."""
    configure(site, abort_grace_s=1, **{"backends.criu.run_as": "job-user"})
    mom = make_mom(site)
    first = site.start_job("42.vm", app_env={"COUNTER_LIMIT": "100000"})
    second = _leader_task(site, "42.vm", site.jobs_dir / "42.vm.task2.OU", ignore_term=True)
    deadline = time.monotonic() + 30
    while len(counts(second.output)) < 3:
        assert time.monotonic() < deadline, "task 2 does not count"
        time.sleep(0.05)
    pids = {1: [first.exec_pid(), first.app_pid()], 2: [second.leader.pid]}
    tasks = {1: Task(first, "42.vm", task_id=1), 2: Task(second, "42.vm", task_id=2)}
    old_sid = {1: first.session_id, 2: second.leader.pid}
    restarts: dict[int, int] = {}
    on_node: list[int | None] = [pid for group in pids.values() for pid in group]  # as the node sees them
    for _round in range(2):
        held = mom.checkpoint_job(list(tasks.values()), abort=True)  # qhold: every task, one .CK
        assert [h.status for h in held] == [0, 0], events(site, "checkpoint.refused")
        for reaped in restarts.values() or [first.leader.pid, second.leader.pid]:  # MOM reaps its tasks
            os.waitpid(reaped, 0)
        wait_until_gone([pid for pid in on_node if pid is not None])
        restarts = {n: mom.start_restart(task, old_sid=old_sid[n]) for n, task in tasks.items()}
        deadline = time.monotonic() + 30
        while None in (on_node := [seen_as(restarts[n], pid) for n, group in pids.items() for pid in group]):
            assert time.monotonic() < deadline, f"not restored: {events(site, 'restart.refused')}"
            time.sleep(0.05)
        # a periodic checkpoint: MOM passes each restart process's session; both pointers are kept
        tasks = {n: Task(t.job, "42.vm", task_id=n, session_id=restarts[n]) for n, t in tasks.items()}
        periodic = mom.checkpoint_job(list(tasks.values()))
        assert [p.status for p in periodic] == [0, 0], events(site, "checkpoint.refused")
        pointers = [json.loads(p.path.read_text()) for p in periodic]
        assert [p["job_id"] for p in pointers] == ["42.vm", "42.vm+task2"], pointers
        assert all(Path(p["generation"]).is_dir() for p in pointers), pointers
        old_sid = dict(restarts)
    mom.qdel(list(restarts.values()))  # SIGTERM to each task's session; no SIGKILL for task 2's
    for restart in restarts.values():
        os.waitpid(restart, 0)
    deadline = time.monotonic() + 10
    while left := [p for p in on_node if p is not None and is_running(p)]:
        assert time.monotonic() < deadline, (
            f"{[(p, os.getsid(p), os.getpgid(p)) for p in left]} outlived qdel"
        )
        time.sleep(0.05)
    for output in (first.output, second.output):
        numbers = counts(output)
        assert numbers == list(range(1, numbers[-1] + 1)), f"{output.name} did not count on: {numbers[-5:]}"


def test_a_tampered_image_at_restart_is_refused_and_the_log_says_why_with_the_job_id(site: Site) -> None:
    """Issue 14 #3: qrls of a job whose image was changed ends the job with Exit_status 65, and
    MOM's comment says only "failed": the reason must be in the log, under the job's id."""
    configure(site, **{"backends.criu.run_as": "job-user"})
    mom = make_mom(site)
    job = site.start_job("43.vm")
    task = Task(job, "43.vm")
    held = mom.checkpoint(task, abort=True)
    assert held.status == 0, events(site, "checkpoint.refused")
    job.wait_ended()
    crash(job)  # MOM reaps the task
    held_at = counts(job.output)
    [generation] = site.generations("43.vm")
    pages = max((generation / "image").glob("pages-*.img"), key=lambda p: p.stat().st_size)
    with open(pages, "r+b") as image:
        first = image.read(1)
        image.seek(0)
        image.write(bytes([first[0] ^ 0xFF]))
    _pid, status = mom.restart(task, old_sid=job.session_id)
    assert status == 65, events(site, "restart.refused")
    [refusal] = events(site, "restart.refused")
    assert refusal["job_id"] == "43.vm" and refusal["exit_status"] == 65, refusal
    assert f"image/{pages.name} has changed since the checkpoint" in str(refusal["error"]), refusal
    assert counts(job.output) == held_at, "the tampered job ran"

"""The seed's restart flow from a user's own job script: ``sudo -n mom-restart --own --job JOB_ID``.

The new job runs as the user; restoring needs root, so it goes through sudo with the rule that
packaging/sudoers-mom-restart ships (installed here for the test, pointing at the program under test).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Site, User, call_hook, crash, installed, numbers, seen_as, wait_until_gone

ROOT = Path(__file__).resolve().parents[2]
SUDOERS = Path("/etc/sudoers.d/mom-checkpoint-test")
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def sudo_rule() -> Iterator[Path]:
    """The shipped rule with the program under test; the site's config reaches it through sudo
    (test-only: the shipped rule keeps sudo's env_reset, so a user cannot choose root's config)."""
    if shutil.which("visudo") is None:
        if IN_CI:
            pytest.fail("sudo is missing in CI (make test-user installs it)")
        pytest.skip("sudo is missing (make test-user installs it)")
    program = installed("mom-restart")
    rule = (ROOT / "packaging" / "sudoers-mom-restart").read_text()
    assert "/usr/local/sbin/mom-restart --own *" in rule
    rule = rule.replace("/usr/local/sbin/mom-restart", str(program))
    rule += f'Defaults!{program} env_keep += "MOM_CHECKPOINT_CONFIG"\n'
    SUDOERS.write_text(rule)
    SUDOERS.chmod(0o440)
    try:
        check = subprocess.run(["visudo", "-cf", str(SUDOERS)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        yield program
    finally:
        SUDOERS.unlink()


def user_job(
    site: Site, user: User, command: str, workdir: Path, output: Path | None = None
) -> subprocess.Popen[str]:
    """A new batch job of ``user`` whose script is ``command`` (its own session and umask 077, like
    pbs_mom's of TORQUE and OpenPBS), its stdout going to ``output`` (the new job's own .OU) when
    given."""
    out = open(output, "wb") if output is not None else None  # noqa: SIM115 - handed to the child
    if out is not None and output is not None:
        os.chown(output, user.uid, user.gid)
    return subprocess.Popen(
        ["/bin/sh", "-c", command],
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        umask=0o077,
        start_new_session=True,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=out if out is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "PBS_O_WORKDIR": str(workdir),
            "MOM_CHECKPOINT_CONFIG": str(site.config),
        },
    )


@pytest.mark.usefixtures("criu")
def test_a_users_new_job_restarts_their_checkpointed_job(site: Site, sudo_rule: Path) -> None:
    site.configure(**{"backends.criu.run_as": "job-user"})
    old = site.start_job("611.head", app_env={"COUNTER_LIMIT": "120", "COUNTER_EXIT": "9"})
    app = old.app_pid()
    assert call_hook(site.torque_args(old, signal_number=15), site.config).returncode == 0
    old.wait_ended()
    checkpointed = old.counts()[-1]
    crash(old)

    workdir = old.output.parent
    old.output.unlink()  # the old job has ended: TORQUE delivered its output and its spool files are gone
    resumed = workdir / "612.new.OU"  # the new job's own output
    # user_job runs it with umask 077, as TORQUE and OpenPBS run jobs, and sudo keeps it (issue 26 #1:
    # the restorer could not enter its work folder, made 0700 by that umask; exit 80)
    new = user_job(
        site, site.user, f'exec sudo -n {sudo_rule} --own --job 611.head --cwd "$PBS_O_WORKDIR"',
        workdir, output=resumed,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not numbers(resumed.read_text()):
        assert time.monotonic() < deadline and new.poll() is None, "the application never wrote on"
        time.sleep(0.05)
    # the application has its PID back in its namespace, under the new job (whose session's end ends it)
    assert seen_as(new.pid, app) is not None, "the application is not in the new job"
    _, err = new.communicate(timeout=120)
    assert new.returncode == 9, err  # the new job ends with the application's own exit status
    # issue 13 #2: the application writes on into the new job's output; nothing of the old job's is made
    counted = numbers(resumed.read_text())
    assert counted == list(range(checkpointed + 1, 121)), counted[:5]
    assert not old.output.exists(), "the old job's output file was re-created"


def test_own_restores_only_the_callers_checkpoints(site: Site, root_user: User, sudo_rule: Path) -> None:
    site.configure(
        backend="psnc",
        **{
            "backends.psnc.chkpnt": str(site.standin("chkpnt")),
            "backends.psnc.resume": str(site.standin("resume")),
        },
    )
    theirs = site.start_job("612.head", user=root_user)
    mine = site.start_job("613.head")
    for job in (theirs, mine):
        assert call_hook(site.torque_args(job), site.config).returncode == 0
    workdir = mine.output.parent

    def attempt(command: str) -> tuple[int, str]:
        proc = user_job(site, site.user, command, workdir)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err

    status, err = attempt(f"sudo -n {sudo_rule} --own --job 612.head")  # another user's job: no such job
    assert status == 66 and "job 612.head has no complete checkpoint in" in err, err
    assert "root" not in err.replace(str(site.base), ""), err
    status, err = attempt(f"sudo -n {sudo_rule} --own --job 613.head --cwd /root")
    assert status == 77 and "--cwd /root: Permission denied for momtest" in err, err
    status, err = attempt(f"{sudo_rule} --own --job 613.head")
    assert status == 77 and "--own is for sudo" in err, err
    status, err = attempt(f"{sudo_rule} --job 613.head")
    assert status == 77 and "can only be listed by root" in err, err
    assert err.count("\n") == 1, err
    status, err = attempt(f"sudo -n {sudo_rule} --job 612.head")  # the rule demands --own
    assert status == 1 and "password is required" in err, err
    assert not [c for c in site.standin_calls() if c["prog"] == "resume"], "something was restored"


@pytest.mark.usefixtures("criu")
def test_an_openpbs_job_restarted_once_is_resumed_by_the_users_new_job(site: Site, sudo_rule: Path) -> None:
    """What the README tells OpenPBS users whose restarted job cannot be held again (the server
    keeps it at PRERUN): its periodic checkpoints go on; qdel it, and a new job resumes it."""
    from tests.integration.test_openpbs import configure, make_mom
    from tests.openpbs import Task, kill_session

    configure(site, **{"backends.criu.run_as": "job-user"})
    mom = make_mom(site)
    old = site.start_job("45.vm", app_env={"COUNTER_LIMIT": "100000"})
    restored = [old.exec_pid(), old.app_pid()]
    task = Task(old, "45.vm")
    assert mom.checkpoint(task, abort=True).status == 0  # qhold
    old.wait_ended()
    crash(old)
    restart = mom.start_restart(task, old_sid=old.session_id)  # qrls
    deadline = time.monotonic() + 30
    while None in (on_node := [seen_as(restart, pid) for pid in restored]):
        assert time.monotonic() < deadline, "not restored"
        time.sleep(0.05)
    old.wait_count(old.count() + 3)
    before = old.counts()[-1]
    assert mom.checkpoint(Task(old, "45.vm", session_id=restart)).status == 0  # a periodic checkpoint
    checkpointed = old.counts()[-1]
    kill_session(restart, signal.SIGKILL)  # qdel: the restart and its namespace's holder
    os.waitpid(restart, 0)
    wait_until_gone([pid for pid in on_node if pid is not None])  # the namespace ended with them

    workdir = old.output.parent
    resumed = workdir / "46.vm.OU"
    new = user_job(site, site.user, f"exec sudo -n {sudo_rule} --own --job 45.vm", workdir, output=resumed)
    deadline = time.monotonic() + 60
    while len(numbers(resumed.read_text())) < 3:
        assert time.monotonic() < deadline and new.poll() is None, new.stderr.read() if new.stderr else ""
        time.sleep(0.05)
    counted = numbers(resumed.read_text())
    assert before < counted[0] <= checkpointed + 1, (
        before,
        checkpointed,
        counted[:3],
    )  # from that checkpoint
    assert counted == list(range(counted[0], counted[0] + len(counted)))
    assert seen_as(new.pid, restored[1]) is not None, "the application is not in the new job"
    new.send_signal(signal.SIGTERM)
    new.wait(timeout=30)

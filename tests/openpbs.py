"""A stand-in for OpenPBS's pbs_mom running its checkpoint ``$action`` scripts, as OPENPBS.md records it
(OpenPBS 23.06, src/resmom/mom_main.c and requests.c).

What it reproduces, step by step:
- the ``$action NAME TIMEOUT !SCRIPT ARGS`` lines of mom_priv/config, and the permission rule on the
  script (owned by uid 0, gid <= 10, owner-executable, not world-writable), else it is not run;
- the %-word substitution (%jobid %sid %taskid %path %uid %gid %login %owner %globid %auxid; any other
  %word and the script is not run); %path is <checkpoint path>/<jobid>.CK/<task id, 8 upper-case hex>;
- checkpoint and checkpoint_abort: an existing <jobid>.CK is renamed .CK.old and a new one made (0755,
  root's); the script runs as root with umask 022, cwd the user's home, exactly MOM's environment (no
  PATH), **fds 0, 1, 2 closed** and fd 3 MOM's own log; after TIMEOUT seconds **SIGKILL to the script's
  pid only**; exit 0 without a file at %path: MOM makes an empty 0600 marker there, and removes .old;
  a failed plain checkpoint deletes the new folder and the old one too; a failed abort that left a file
  at %path is taken for a good checkpoint;
- restart with $restart_transmogrify true: the script becomes the task in a new session, fds 0/1/2 on
  /dev/null, %sid the old session negated, and its exit status is the job's;
- jobs run with umask 077 (Site.start_job), and so does a resume job's sudo;
- qdel: SIGTERM to each task's session, SIGKILL after kill_delay only where MOM still counts a
  process, and it counts no root-owned one (a task left with only its root restart process, its
  restored application in the old session, is "force exited" without a SIGKILL).

One deviation, for the tests' own config: MOM_CHECKPOINT_CONFIG is added to the environment (a node
uses the default /etc/mom-checkpoint/config.toml).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.helpers import Job

MOM_ENV_KEYS = (
    "UID", "GID", "HOME", "LOGNAME", "PBS_JOBNAME", "PBS_JOBID", "PBS_QUEUE", "SHELL", "USER",
    "PBS_JOBCOOKIE", "PBS_NODENUM", "PBS_TASKNUM", "PBS_MOMPORT", "PBS_NODEFILE", "PBS_SID", "PBS_JOBDIR",
)  # fmt: skip
WORDS = ("%jobid", "%sid", "%taskid", "%path", "%uid", "%gid", "%login", "%owner", "%globid", "%auxid")


class NotRun(Exception):
    """MOM refused to run the script (permissions, unknown %word, no such $action)."""


@dataclass
class Task:
    job: Job
    job_id: str  # OpenPBS's job id (several tasks of one job share it)
    task_id: int = 1
    session_id: int = 0  # the task's session; 0: the job's

    @property
    def sid(self) -> int:
        return self.session_id or self.job.session_id


@dataclass
class Outcome:
    status: int | None  # the script's exit status; None when MOM killed it at the timeout
    killed: bool
    path: Path  # %path
    marker_made: bool  # MOM made its own empty marker (the script left nothing at %path)
    believes_checkpointed: bool  # what MOM concludes about the task


class Mom:
    KILL_DELAY_S = 2.0  # the server's kill_delay (10 s by default; 4-18 s were seen for a qdel)

    def __init__(self, config_text: str, checkpoint_path: Path, tool_config: Path, mom_log: Path) -> None:
        self.actions: dict[str, tuple[int, str, list[str]]] = {}
        for line in config_text.splitlines():
            words = line.split()
            if len(words) >= 4 and words[0] == "$action" and words[3].startswith("!"):
                self.actions[words[1]] = (int(words[2]), words[3][1:], words[4:])
        self.checkpoint_path = checkpoint_path
        self.tool_config = tool_config
        self.mom_log = mom_log

    # -- what MOM checks and substitutes -------------------------------------------------------------------
    def script_for(self, action: str) -> tuple[int, str, list[str]]:
        if action not in self.actions:
            raise NotRun(f"no $action {action}")
        timeout, script, words = self.actions[action]
        st = os.stat(script)
        if st.st_uid != 0 or st.st_gid > 10 or not st.st_mode & stat.S_IXUSR or st.st_mode & stat.S_IWOTH:
            raise NotRun(f"{script}: not root's 0755-like (uid {st.st_uid} gid {st.st_gid} {st.st_mode:o})")
        return timeout, script, words

    def task_path(self, task: Task) -> Path:
        return self.checkpoint_path / f"{task.job_id}.CK" / f"{task.task_id:08X}"

    def substitute(self, words: list[str], task: Task, sid: int) -> list[str]:
        user = task.job.user
        values = {
            "%jobid": task.job_id, "%sid": str(sid), "%taskid": str(task.task_id),
            "%path": str(self.task_path(task)), "%uid": str(user.uid), "%gid": str(user.gid),
            "%login": user.name, "%owner": f"{user.name}@localhost", "%globid": "NULL", "%auxid": "NULL",
        }  # fmt: skip
        out = []
        for word in words:
            if word.startswith("%") and word not in values:
                raise NotRun(f"unknown {word}: the script is not run")
            out.append(values.get(word, word))
        return out

    def environment(self, task: Task, sid: int) -> dict[str, str]:
        user = task.job.user
        env = {
            "UID": str(user.uid), "GID": str(user.gid), "HOME": user.home, "LOGNAME": user.name,
            "PBS_JOBNAME": "job", "PBS_JOBID": task.job_id, "PBS_QUEUE": "workq", "SHELL": "/bin/bash",
            "USER": user.name, "PBS_JOBCOOKIE": "0" * 32, "PBS_NODENUM": "0",
            "PBS_TASKNUM": str(task.task_id), "PBS_MOMPORT": "15003",
            "PBS_NODEFILE": f"/var/spool/pbs/aux/{task.job_id}", "PBS_SID": str(sid),
            "PBS_JOBDIR": user.home,
        }  # fmt: skip
        assert sorted(env) == sorted(MOM_ENV_KEYS)
        return {**env, "MOM_CHECKPOINT_CONFIG": str(self.tool_config)}

    # -- the calls ----------------------------------------------------------------------------------------
    def checkpoint(self, task: Task, abort: bool = False) -> Outcome:
        """A job of one task; see checkpoint_job."""
        [outcome] = self.checkpoint_job([task], abort)
        return outcome

    def checkpoint_job(self, tasks: list[Task], abort: bool = False) -> list[Outcome]:
        """mom_checkpoint_job (requests.c ~3513): the job's <jobid>.CK is renamed to .old once, then
        the script runs for each running task in turn; the first failure ends the loop. On success
        .old is removed; a failed plain checkpoint removes the new folder and the old one as well
        (put back, then removed with it: ~3690-3923); a failed abort leaves both as they are."""
        action = "checkpoint_abort" if abort else "checkpoint"
        timeout, script, words = self.script_for(action)
        job_ids = {task.job_id for task in tasks}
        assert len(job_ids) == 1, "one job's tasks"
        ckdir = self.checkpoint_path / f"{job_ids.pop()}.CK"
        old = ckdir.with_name(ckdir.name + ".old")
        if ckdir.exists():
            shutil.rmtree(old, ignore_errors=True)
            ckdir.rename(old)
        ckdir.mkdir(mode=0o755)
        ckdir.chmod(0o755)
        outcomes = []
        for task in tasks:
            argv = [script, *self.substitute(words, task, task.sid)]
            status, killed = self._run_closed_stdio(argv, self.environment(task, task.sid), task, timeout)
            path = self.task_path(task)
            if status != 0:
                believes = abort and path.exists()  # a failed abort that left a file: MOM takes it for one
                outcomes.append(Outcome(status, killed, path, False, believes))
                if not abort:
                    shutil.rmtree(ckdir, ignore_errors=True)
                    shutil.rmtree(old, ignore_errors=True)
                return outcomes
            marker = not path.exists()
            if marker:
                path.touch(mode=0o600)
            outcomes.append(Outcome(status, killed, path, marker, True))
        shutil.rmtree(old, ignore_errors=True)
        return outcomes

    def _run_closed_stdio(
        self, argv: list[str], env: dict[str, str], task: Task, timeout: float
    ) -> tuple[int | None, bool]:
        log_fd = os.open(self.mom_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        pid = os.fork()
        if pid == 0:  # the child: MOM's set-up, then exec; nothing here may raise into pytest
            try:
                os.chdir(task.job.user.home if os.path.isdir(task.job.user.home) else "/")
                os.umask(0o022)
                os.dup2(log_fd, 3)
                os.closerange(4, 256)
                for fd in (0, 1, 2):
                    os.close(fd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        os.close(log_fd)
        return _wait(pid, timeout)

    def qdel(self, sessions: list[int]) -> None:
        """qdel of a running job: SIGTERM to each task's session; after kill_delay, SIGKILL only to a
        session in which MOM still counts a process. A task whose processes are all root's, or sit
        in another session (a restored task keeps its old one), is "force exited" and never gets it."""
        for sid in sessions:
            kill_session(sid, signal.SIGTERM)
        time.sleep(self.KILL_DELAY_S)
        for sid in sessions:
            if kill_session(sid, 0):
                kill_session(sid, signal.SIGKILL)

    def restart(self, task: Task, old_sid: int) -> tuple[int, int]:
        """$restart_transmogrify true: the script is the task's new top process; returns (pid, status)."""
        pid = self.start_restart(task, old_sid)
        _, status = os.waitpid(pid, 0)
        return pid, os.waitstatus_to_exitcode(status)

    def start_restart(self, task: Task, old_sid: int) -> int:
        _timeout, script, words = self.script_for("restart")  # transmogrified: the task, no alarm
        argv = [script, *self.substitute(words, task, -old_sid)]
        env = self.environment(task, -old_sid)
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                os.chdir(task.job.user.home if os.path.isdir(task.job.user.home) else "/")
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, 256)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        return pid


def kill_session(sid: int, sig: int) -> int:
    """kill_session (src/resmom/linux/mom_mach.c ~1336), how MOM ends a task (qdel, the job's end):
    ``sig`` to every process whose session is ``sid``, as /proc shows them, then to its process group
    for what /proc missed. Returns how many of them are not root's: MOM counts only those (seen,
    OPENPBS.md third round), so a task whose only process left is root's counts as gone."""
    found = 0
    for process in psutil.process_iter():
        try:
            if process.pid > 1 and os.getsid(process.pid) == sid:
                os.kill(process.pid, sig)
                found += process.uids().real != 0
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    if sig == signal.SIGKILL or found == 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sid, sig)
    return found


def _wait(pid: int, timeout: float) -> tuple[int | None, bool]:
    """MOM's alarm(timeout) in the waiting child: on expiry SIGKILL to the script alone."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, True
        time.sleep(0.02)

"""mom-checkpoint-run, pbs_mom's $checkpoint_run_exe: execs the job shell in place."""

from __future__ import annotations

import os
import subprocess

from tests.helpers import installed


def test_execs_the_shell_keeping_pid_session_environment_and_files() -> None:
    read_fd, write_fd = os.pipe()
    script = f'echo "$$ $(ps -o sid= -p $$) $JOB_VAR"; cat; echo to-inherited-fd >&{write_fd}'
    proc = subprocess.Popen(
        [str(installed("mom-checkpoint-run")), "/bin/bash", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={"PATH": "/bin:/usr/bin", "JOB_VAR": "kept"},
        start_new_session=True,
        pass_fds=(write_fd,),
    )
    os.close(write_fd)
    out, _ = proc.communicate(b"script from the pipe\n", timeout=30)
    lines = out.decode().splitlines()
    assert lines[0].split() == [str(proc.pid), str(proc.pid), "kept"]  # same pid, its own session, env kept
    assert lines[1] == "script from the pipe"  # stdin (pbs_mom's pipe) reaches the shell
    assert os.read(read_fd, 100) == b"to-inherited-fd\n"
    assert proc.returncode == 0


def test_shell_exit_status_is_the_jobs() -> None:
    proc = subprocess.run([str(installed("mom-checkpoint-run")), "/bin/sh", "-c", "exit 7"], check=False)
    assert proc.returncode == 7


def test_shell_that_cannot_be_executed() -> None:
    proc = subprocess.run(
        [str(installed("mom-checkpoint-run")), "/nonexistent/bash"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 127
    assert (
        proc.stderr
        == "mom-checkpoint-run: cannot execute the job shell /nonexistent/bash: No such file or directory\n"
    )


def test_no_shell_given_is_a_usage_error() -> None:
    proc = subprocess.run([str(installed("mom-checkpoint-run"))], capture_output=True, text=True, check=False)
    assert proc.returncode == 64
    assert proc.stderr.startswith("mom-checkpoint-run: no shell given\n")

"""Test support for TORQUE: for tick and advise, a server made of a ``qstat -f -1`` fixture that the
qstat and qchkpt stand-ins (tests/standins/) read, and a node's config that points mom-checkpoint at
them; for checkpoints and restarts, ``TorqueMom``: what pbs_mom does around them."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from mom_checkpoint import __version__
from mom_checkpoint.image.manifest import (
    SCHEMA,
    BackendInfo,
    CallInfo,
    GenerationInfo,
    HostInfo,
    JobInfo,
    Manifest,
    Timings,
    ToolInfo,
)
from tests.helpers import (
    MOM_ENV,
    STANDINS,
    TESTS,
    HookResult,
    Job,
    Site,
    call_hook,
    crash,
    installed,
    start_restart,
    toml_value,
)

FIXTURES = TESTS / "fixtures"
FIXTURE = "qstat-f-1.txt"


class Cluster:
    """One node's view: the jobs pbs_server knows (``qstat.txt``), the stand-ins behind wrappers (the
    tick gives TORQUE's commands a clean environment, as it would a site's wrapper), a spool, a log and
    a config file."""

    def __init__(self, base: Path, fixture: str = FIXTURE) -> None:
        self.base = base
        self.jobs = base / "qstat.txt"
        shutil.copy(FIXTURES / fixture, self.jobs)
        self.bin = base / "bin"
        self.bin.mkdir(mode=0o755)
        self.qchkpt_log = base / "qchkpt.log"
        self.qstat_log = base / "qstat.log"
        self.spool = base / "spool"
        self.log = base / "tick.log"
        self.config = base / "config.toml"
        self.wrap()
        self.configure()

    def wrap(self, **env: str) -> None:
        """(Re)write the qstat and qchkpt wrappers, with test controls such as QSTAT_FAIL=1."""
        settings = {
            "QSTAT_FIXTURE": str(self.jobs),
            "QSTAT_LOG": str(self.qstat_log),
            "QCHKPT_LOG": str(self.qchkpt_log),
            **env,
        }
        exports = "".join(f"{k}={shlex.quote(v)} " for k, v in settings.items())
        for program in ("qstat", "qchkpt"):
            wrapper = self.bin / program
            wrapper.write_text(f'#!/bin/sh\n{exports}exec {STANDINS / program} "$@"\n')
            wrapper.chmod(0o755)

    def configure(self, **keys: Any) -> Path:
        values: dict[str, Any] = {
            "spool_dir": str(self.spool),
            "log_file": str(self.log),
            "qstat": str(self.bin / "qstat"),
            "qchkpt": str(self.bin / "qchkpt"),
            "tick_jobs": "all",
            **keys,
        }
        self.config.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
        self.config.chmod(0o644)
        return self.config

    # -- the jobs ----------------------------------------------------------------------------------
    def set(self, job_id: str, name: str, value: str | None) -> None:
        """Set (or, with None, remove) one attribute line of a job in the fixture."""
        blocks = self.jobs.read_text().split("\n\n")
        for i, block in enumerate(blocks):
            if block.startswith(f"Job Id: {job_id}\n"):
                lines = [line for line in block.split("\n") if not line.startswith(f"    {name} = ")]
                if value is not None:
                    lines.append(f"    {name} = {value}")
                blocks[i] = "\n".join(lines)
                break
        else:
            raise AssertionError(f"{job_id} is not in the fixture")
        self.jobs.write_text("\n\n".join(blocks))

    def checkpointed(self, job_id: str, ago: float) -> None:
        """pbs_mom recorded a good checkpoint of the job ``ago`` seconds ago (qstat -f prints ctime)."""
        self.set(job_id, "checkpoint_time", time.ctime(time.time() - ago))

    def started(self, job_id: str, ago: float) -> None:
        self.set(job_id, "start_time", time.ctime(time.time() - ago))

    def rename(self, old: str, new: str) -> None:
        self.jobs.write_text(self.jobs.read_text().replace(f"Job Id: {old}\n", f"Job Id: {new}\n"))

    def qchkpt_calls(self) -> list[str]:
        """The job ids qchkpt was called with, in order."""
        if not self.qchkpt_log.exists():
            return []
        calls = [json.loads(line) for line in self.qchkpt_log.read_text().splitlines() if line.strip()]
        return [job for call in calls for job in call["argv"][1:]]

    def qstat_calls(self) -> list[list[str]]:
        if not self.qstat_log.exists():
            return []
        return [json.loads(line)["argv"][1:] for line in self.qstat_log.read_text().splitlines()]

    # -- the node ----------------------------------------------------------------------------------
    def run(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The installed mom-checkpoint, as a systemd timer or cron runs it: PATH=/bin:/usr/bin."""
        env = {**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(config or self.config)}
        return subprocess.run(
            [str(installed("mom-checkpoint")), *args],
            env=env, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def tick(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("tick", *args)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode in (0, 1), result.stderr
        envelope = json.loads(result.stdout)
        assert envelope["result_schema"] == 1 and envelope["command"] == args[0]
        return envelope

    def log_events(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        events = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [e for e in events if event is None or e["event"] == event]

    def add_generation(
        self, job_id: str, ago: float, dump_s: float | None = None, number: int = 1, exec_pid: int = 4711
    ) -> Path:
        """A complete generation in the spool, started ``ago`` seconds ago: only its name (what tick
        reads), or with ``dump_s`` also a manifest whose checkpointer ran that long (what advise reads)."""
        started = time.time() - ago
        name = f"{number:06d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}"
        self.spool.mkdir(mode=0o711, exist_ok=True)
        run = self.spool / f"{exec_pid}.{job_id}"
        run.mkdir(mode=0o700, exist_ok=True)
        path = run / name
        path.mkdir(mode=0o700)
        if dump_s is not None:
            (path / "image").mkdir(mode=0o700)
            record = manifest(job_id, number, name, exec_pid, dump_s)
            (path / "manifest.json").write_text(record.to_json())
            (path / "manifest.json").chmod(0o600)  # as the hook writes it: root's alone
        return path


def manifest(job_id: str, number: int, name: str, exec_pid: int, dump_s: float) -> Manifest:
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Manifest(
        schema=SCHEMA,
        tool=ToolInfo("mom-checkpoint", __version__),
        job=JobInfo(job_id, exec_pid - 1, exec_pid - 1, exec_pid, "alice", 1000, "users", 100, "session"),
        call=CallInfo("seed", [str(exec_pid - 1), job_id], 0, None, None, None),
        host=HostInfo("node01", "6.1.0"),
        generation=GenerationInfo(number, name),
        backend=BackendInfo("psnc", ["chkpnt", "-p", str(exec_pid)], "unknown", 0, "root", False),
        times=Timings(iso, iso, dump_s, None, 0.25, dump_s + 0.25),
        processes=[],
        files=[],
        total_bytes=0,
    )


def decisions(envelope: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["job_id"]: d for d in envelope["data"]["decisions"]}


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), repr(stderr)
    return stderr


@dataclass(frozen=True)
class JobEnd:
    """What TORQUE records and delivers when a job ends: its exit_status (state C) and its output."""

    exit_status: int
    delivered: str


class TorqueMom:
    """pbs_mom's side of a job's checkpoints and restarts, as a real TORQUE 6.1.3 pbs_mom was seen to
    do them (shared/MOM_CONTRACT.md): jobs run with umask 077 (Site.start_job), the hook through popen
    as root, the job ended by the hook alone (SIGNAL 15), the job script deleted when the job ends, the
    killed application's zombie holding its PID about a second after qstat shows the hold, empty
    .OU/.ER re-created before a restart, the restart script started with fork + setsid + execv, a
    restart script that exits non-zero ending the job at once with that code (no retry, the output
    delivered as it is), and qdel as SIGTERM then SIGKILL to the job's session, reported as
    256+signal."""

    KILL_DELAY_S = 2.0
    ZOMBIE_S = 1.5  # how long the held application's zombie keeps its PID (init reaping slowly)

    def __init__(self, site: Site) -> None:
        self.site = site
        self._reapers: list[threading.Timer] = []
        self.zombie: int | None = None  # the PID the last qhold left a zombie at

    def qhold(self, job: Job) -> list[object]:
        """qhold of a job that runs its first life: the hook with SIGNAL 15, the job's end, and the
        application's zombie left at its PID for ZOMBIE_S (a qrls at once meets it). Returns the
        hook's arguments, which qrls passes on. None of it is reaped by the caller."""
        application = job.app_pid()
        result, args = self.checkpoint(job, signal_number=15)
        assert result.returncode == 0, result.stderr
        job.wait_ended()
        self.job_ended(job)
        self.zombie = zombie = zombie_at(application)
        if zombie is not None:
            reaper = threading.Timer(self.ZOMBIE_S, os.waitpid, (zombie, 0))
            reaper.start()
            self._reapers.append(reaper)
        return args

    def zombies_reaped(self) -> None:
        for reaper in self._reapers:
            reaper.join()

    def ended(self, task: subprocess.Popen[bytes], job: Job, timeout: float = 90) -> JobEnd:
        """The job's end as TORQUE records it once its task (the restart script) exits: a non-zero
        code ends the job there and then, 256+N for a signal N, and the output files are delivered."""
        status = task.wait(timeout=timeout)
        return JobEnd(256 - status if status < 0 else status, job.output.read_text())

    def checkpoint(
        self, job: Job, signal_number: int = 0, session: int | None = None
    ) -> tuple[HookResult, list[object]]:
        """``session``: the job's session now (a restarted job's is its restart process's)."""
        args = self.site.torque_args(job, signal_number=signal_number)
        if session is not None:
            args[0] = session
        return call_hook(args, self.site.config), args

    def job_ended(self, job: Job) -> None:
        """The job's processes are gone (held, killed or the node lost them): pbs_mom deletes the job
        script, and what is left of the session dies with it."""
        crash(job)
        (job.output.parent / f"{job.job_id}.SC").unlink(missing_ok=True)

    def release(self, job: Job, checkpoint_args: list[object]) -> subprocess.Popen[bytes]:
        """qrls of a held job: empty .OU/.ER re-created, then $restart_script with the job's old session
        id and the pair the last good checkpoint left."""
        job.output.write_text("")
        name = job.user.name
        return start_restart(
            [job.session_id, job.job_id, name, name, checkpoint_args[4], checkpoint_args[5]], self.site.config
        )

    def qdel(self, task: subprocess.Popen[bytes]) -> int:
        """SIGTERM to every process of the task's session, SIGKILL after kill_delay; the job's exit
        status as TORQUE reports it (256+N when a signal ended the task)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in psutil.pids():
                with contextlib.suppress(ProcessLookupError):
                    if os.getsid(pid) == task.pid:
                        os.kill(pid, sig)
            try:
                status = task.wait(timeout=self.KILL_DELAY_S)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            status = task.wait(timeout=30)
        return 256 - status if status < 0 else status


def zombie_at(pid: int) -> int | None:
    """A child of this process that has exited and is not reaped, made to take ``pid`` (root sets the
    kernel's last pid just below it): an application's zombie its parent has not reaped yet. None
    when another process took that pid first."""
    for _ in range(5):
        with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
            fh.write(str(pid - 1))
        child = os.fork()
        if child == 0:
            os._exit(0)
        if child == pid:
            return child
        os.waitpid(child, 0)
    return None

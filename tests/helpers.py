"""Test support: jobs started the way pbs_mom starts them, and the hook called the way pbs_mom calls it."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

TESTS = Path(__file__).resolve().parent
COUNTER = TESTS / "apps" / "counter.py"
TICKER = TESTS / "apps" / "ticker.py"  # a line every 2 ms, holding TICKER_MIB of memory
APPS = TESTS / "apps"
STANDINS = TESTS / "standins"
BIN = Path(sys.executable).parent
TEST_USER = os.environ.get("MOM_TEST_USER", "momtest")
# What pbs_mom gives its hooks (MOM_CONTRACT.md): nothing but these.
MOM_ENV = {"PATH": "/bin:/usr/bin", "LANG": "C.UTF-8"}


def installed(program: str) -> Path:
    """An installed console script of the package under test."""
    path = BIN / program
    assert path.exists(), f"{program} is not installed in {BIN}: run make setup"
    return path


@dataclass
class HookResult:
    returncode: int
    stderr: str  # what pbs_mom reads back (and turns into the job comment)
    argv: list[str]


def call_hook(
    args: Sequence[object], config: Path, program: str = "mom-checkpoint", timeout: float = 300
) -> HookResult:
    """As pbs_mom does: popen("<program> <args joined by spaces> 2>&1 1>/dev/null") as root."""
    words = [str(installed(program)), *[str(a) for a in args]]
    command = " ".join(words) + " 2>&1 1>/dev/null"
    env = {**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(config)}
    proc = subprocess.run(
        ["/bin/sh", "-c", command],
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )
    return HookResult(proc.returncode, proc.stdout.decode(errors="replace"), words)


def call_direct(
    args: Sequence[str], config: Path, program: str = "mom-checkpoint", timeout: float = 300
) -> HookResult:
    """The program with exactly these arguments (no shell in between), stderr captured."""
    words = [str(installed(program)), *args]
    env = {**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(config)}
    proc = subprocess.run(
        words, env=env, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
    )
    return HookResult(proc.returncode, proc.stderr.decode(errors="replace"), words)


def run_python(code: str, args: Sequence[object], config: Path | str) -> subprocess.CompletedProcess[str]:
    """``python -c code args...`` in pbs_mom's environment (cwd /, no stdin), output captured: the hook's
    own code run with a test's instrumentation around it."""
    return subprocess.run(
        [sys.executable, "-c", code, *[str(a) for a in args]],
        env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(config)},
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def named(cls, name: str) -> User:
        entry = pwd.getpwnam(name)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


@dataclass
class Job:
    """A batch job as pbs_mom runs it: session-leader shell -> job script shell -> application."""

    job_id: str
    leader: subprocess.Popen[bytes]
    output: Path
    user: User
    stdin: IO[bytes] | None = field(default=None, repr=False)

    @property
    def session_id(self) -> int:
        return self.leader.pid

    def exec_pid(self) -> int:
        children = psutil.Process(self.session_id).children()
        assert len(children) == 1, children
        return children[0].pid

    def app_pid(self) -> int:
        for proc in psutil.Process(self.session_id).children(recursive=True):
            if any(part.endswith(("counter.py", "ticker.py")) for part in proc.cmdline()):
                return proc.pid
        raise AssertionError("the application is not running")

    def count(self) -> int:
        lines = [line for line in self.output.read_text().split("\n")[:-1] if line.strip().isdigit()]
        return int(lines[-1]) if lines else 0

    def counts(self) -> list[int]:
        """The numbers the application wrote (the job shell's own messages share the file)."""
        return numbers(self.output.read_text())

    def wait_count(self, at_least: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (count := self.count()) >= at_least:
                return count
            time.sleep(0.02)
        raise AssertionError(
            f"job {self.job_id} did not count to {at_least} in {timeout}s (at {self.count()})"
        )

    def processes(self, zombies: bool = False) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == self.session_id and (
                    zombies or proc.status() != psutil.STATUS_ZOMBIE
                ):
                    found.append(proc)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        return found

    def is_running(self) -> bool:
        try:
            return psutil.Process(self.app_pid()).status() != psutil.STATUS_ZOMBIE
        except (AssertionError, psutil.NoSuchProcess):
            return False

    def wait_ended(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.processes():
                return
            time.sleep(0.05)
        raise AssertionError(f"job {self.job_id} still has processes: {self.processes()}")

    def stop(self) -> None:
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if self.stdin is not None:
            self.stdin.close()
        try:
            self.leader.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.leader.kill()
        wait_until_gone([p.pid for p in self.processes()])


def qhold_and_lose(site: Site, job: Job, *, empty_output: bool = False) -> tuple[list[object], str]:
    """A qhold (SIGNAL 15: the hook checkpoints, CRIU ends the job), then the node loses the job's
    session; with ``empty_output``, pbs_mom re-creates empty .OU/.ER files before the restart. Returns
    the hook's arguments and what the job had printed."""
    args = site.torque_args(job, signal_number=15)
    assert call_hook(args, site.config).returncode == 0
    job.wait_ended()
    printed = job.output.read_text()
    crash(job)
    if empty_output:
        job.output.write_text("")
    return args, printed


def restart_args(job: Job, checkpoint_args: Sequence[object]) -> list[object]:
    """pbs_mom's six $restart_script arguments for a job checkpointed with ``checkpoint_args``."""
    name = job.user.name
    return [job.session_id, job.job_id, name, name, checkpoint_args[4], checkpoint_args[5]]


def start_restart(
    args: Sequence[object],
    config: Path,
    stdout: IO[bytes] | int = subprocess.DEVNULL,
    program: Path | None = None,
) -> subprocess.Popen[bytes]:
    """mom-restart (or ``program``) as pbs_mom starts it: fork, setsid, execv (no shell), stdio on
    /dev/null, cwd /."""
    return subprocess.Popen(
        [str(program or installed("mom-restart")), *[str(a) for a in args]],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        cwd="/",
        env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(config)},
    )


def crash(job: Job) -> None:
    """The node loses the job: every process of its session killed at once, and gone (zombies too:
    an unreaped zombie keeps its PID taken, and CRIU needs the image's PIDs)."""
    pids = [p.pid for p in job.processes(zombies=True)]
    job.stop()
    wait_until_gone(pids)


def wait_until_gone(pids: Sequence[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.05)


class Site:
    """A node's set-up for one test: spool, TORQUE checkpoint root, log, config file."""

    def __init__(self, base: Path, user: User) -> None:
        self.base = base
        self.user = user
        self.spool = base / "spool"
        self.torque_root = base / "torque" / "checkpoint"
        self.log = base / "hook.log"
        self.jobs_dir = base / "jobs"
        self.torque_root.mkdir(parents=True, mode=0o755)
        self.spool.mkdir(mode=0o711)  # as packaging's tmpfiles.d entry leaves it on a node
        self.jobs_dir.mkdir(mode=0o755)
        self.config = base / "config.toml"
        self.configure()
        self._jobs: list[Job] = []

    def configure(self, text: str | None = None, **keys: Any) -> Path:
        """Write the config file: the site defaults plus ``keys`` (dotted names for tables)."""
        if text is not None:
            self.config.write_text(text)
            return self.config
        values: dict[str, Any] = {
            "spool_dir": str(self.spool),
            "log_file": str(self.log),
            "torque_checkpoint_roots": [str(self.torque_root)],
            "timeout_s": 120,
        }
        values.update({k: v for k, v in keys.items() if "." not in k})
        tables: dict[str, dict[str, Any]] = {}
        for key, value in keys.items():
            if "." in key:
                table, name = key.rsplit(".", 1)
                tables.setdefault(table, {})[name] = value
        lines = [f"{k} = {toml_value(v)}" for k, v in values.items()]
        for table, items in tables.items():
            lines.append(f"[{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in items.items()]
        self.config.write_text("\n".join(lines) + "\n")
        return self.config

    def standin(self, program: str, **env: str) -> Path:
        """A site wrapper around a checkpointer stand-in (the hook gives checkpointers a clean environment,
        so test controls like STANDIN_FAIL are set here, as a site's own wrapper script would)."""
        bindir = self.base / "bin"
        bindir.mkdir(mode=0o755, exist_ok=True)
        log = self.base / "standin.log"
        log.touch()
        log.chmod(0o666)  # calls as root and as the job's user share it
        settings = {"STANDIN_LOG": str(log), **env}
        exports = "".join(f"{k}={shlex.quote(v)} " for k, v in settings.items())
        wrapper = bindir / program
        wrapper.write_text(f'#!/bin/sh\n{exports}exec {STANDINS / program} "$@"\n')
        wrapper.chmod(0o755)
        return wrapper

    def standin_calls(self) -> list[dict[str, Any]]:
        log = self.base / "standin.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def checkpoint_dir(self, job_id: str, owner: User | None = None) -> Path:
        """What pbs_mom creates before each call: <root>/<jobid>.CK, 0755, the job owner's."""
        path = self.torque_root / f"{job_id}.CK"
        path.mkdir(mode=0o755, exist_ok=True)
        owner = owner or self.user
        os.chown(path, owner.uid, owner.gid)
        return path

    def torque_args(
        self, job: Job, signal_number: int = 0, depth: str = "-", name: str | None = None
    ) -> list[object]:
        ckdir = self.checkpoint_dir(job.job_id, job.user)
        name = name or f"ckpt.{job.job_id}.{int(time.time() * 1000)}"
        return [
            job.session_id,
            job.job_id,
            job.user.name,
            group_name(job.user.gid),
            ckdir,
            name,
            signal_number,
            depth,
        ]

    def start_job(
        self,
        job_id: str,
        user: User | None = None,
        app_env: Mapping[str, str] | None = None,
        app: Path = COUNTER,
        wait_s: float = 30,
    ) -> Job:
        """Start a job the way pbs_mom does, through mom-checkpoint-run, and wait until it counts
        (``app`` prints one integer a line: the counter, or the benchmarks' ticker)."""
        user = user or self.user
        home = self.jobs_dir / job_id
        home.mkdir(mode=0o755)
        os.chown(home, user.uid, user.gid)
        script = home / f"{job_id}.SC"
        script.write_text(f"#!/bin/sh\n/usr/bin/python3 {app}\n")
        script.chmod(0o755)
        output = home / f"{job_id}.OU"
        with open(output, "wb") as out:
            os.fchown(out.fileno(), user.uid, user.gid)
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": str(home),
                "USER": user.name,
                "PBS_JOBID": job_id,
                "PBS_O_WORKDIR": str(home),
                **(app_env or {}),
            }
            leader = subprocess.Popen(
                [str(installed("mom-checkpoint-run")), "/bin/bash"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=home,
                env=env,
                user=user.uid,
                group=user.gid,
                extra_groups=[],
                umask=0o077,
                start_new_session=True,
            )
        assert leader.stdin is not None
        leader.stdin.write(f"/bin/bash {script}\n".encode())
        leader.stdin.flush()  # pbs_mom keeps its end of the pipe open, so do we
        job = Job(job_id, leader, output, user, leader.stdin)
        self._jobs.append(job)
        job.wait_count(3, timeout=wait_s)
        return job

    def stop_jobs(self) -> None:
        """End every job of the test, restored ones too (those live in their restart's session, which
        pbs_mom would kill when the restart process ends): anything still writing under this site."""
        for job in self._jobs:
            job.stop()
        leftovers = []
        for proc in psutil.process_iter(["cwd"]):
            paths = [proc.info["cwd"] or ""]
            with contextlib.suppress(psutil.Error):
                paths += [f.path for f in proc.open_files()]
            if proc.pid != os.getpid() and any(path.startswith(f"{self.base}/") for path in paths):
                # os.kill, not proc.kill(): psutil may take a restored process (same pid, new start
                # time) for a reused pid and refuse
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                    leftovers.append(proc.pid)
        wait_until_gone(leftovers)

    # -- what is on disk -------------------------------------------------------------------------------
    def generations(self, job_id: str) -> list[Path]:
        found = sorted(self.spool.glob(f"*.{job_id}/[0-9]*"), key=lambda p: p.name)
        return [p for p in found if p.is_dir()]

    def incoming(self) -> list[Path]:
        return sorted(self.spool.glob("*/.incoming-*"))

    def pruning_left(self, within: float = 10) -> list[Path]:
        """The pruned generations still on disk once the hook's detached remover has had ``within``
        seconds to remove them (it runs after the call)."""
        deadline = time.monotonic() + within
        while (left := sorted(self.spool.glob("*/.pruning-*"))) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    def log_events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


def snapshot(
    root: Path,
    ignore: Sequence[str] = (".locks", ".restarts", "hook.log", "config.toml", "jobs", "standin.log"),
) -> dict[str, tuple[int, int, int]]:
    """(mode, owner, size) of everything below ``root``, minus the paths that a refusal may touch."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ignore]
        for name in [*dirnames, *filenames]:
            if name in ignore:
                continue
            path = Path(dirpath) / name
            st = path.lstat()
            state[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_size if path.is_file() else 0)
    return state


def assert_refused(
    site: Site,
    args: Sequence[object],
    status: int,
    words: str,
    *,
    direct: bool = False,
    program: str = "mom-checkpoint",
    timeout: float = 300,
) -> str:
    """The call is refused with ``status``, one stderr line containing ``words``, and nothing on disk
    changed. ``direct``: exactly these arguments, no shell in between (pbs_mom's popen splits them);
    ``timeout``: a call that has not ended by then fails the test (subprocess.TimeoutExpired)."""
    before = snapshot(site.base)
    if direct:
        result = call_direct([str(a) for a in args], site.config, program=program, timeout=timeout)
    else:
        result = call_hook(args, site.config, program=program, timeout=timeout)
    assert result.returncode == status, f"{result.argv}: {result.returncode}: {result.stderr}"
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"{program}: "), result.stderr
    assert words in result.stderr, result.stderr
    assert snapshot(site.base) == before, "the refusal changed something on disk"
    return result.stderr


def digest_of(data: bytes, algorithm: str = "blake3") -> str:
    """A digest as a manifest records it ("<algorithm>:<hex>"), taken by the hash libraries directly."""
    import hashlib

    import blake3

    state = blake3.blake3(data) if algorithm == "blake3" else hashlib.new(algorithm, data)
    return f"{algorithm}:{state.hexdigest()}"


def verify_generation(generation: Path) -> dict[str, Any]:
    """Check a generation against its manifest by hashing every file: return the manifest."""
    manifest: dict[str, Any] = json.loads((generation / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {str(p.relative_to(generation)) for p in (generation / "image").rglob("*") if p.is_file()}
    assert listed == on_disk, f"{generation}: only listed {listed - on_disk}, only on disk {on_disk - listed}"
    for entry in manifest["files"]:
        data = (generation / entry["path"]).read_bytes()
        assert len(data) == entry["size"], entry["path"]
        assert entry["digest"].startswith("blake3:"), entry  # new generations get BLAKE3
        assert digest_of(data) == entry["digest"], entry["path"]
    return manifest


def modes_below(root: Path) -> Iterator[tuple[Path, int]]:
    for path in [root, *root.rglob("*")]:
        yield path, path.lstat().st_mode & 0o777


def group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def make_base() -> Path:
    """A folder the job's user can pass through (pytest's own tmp folders are root's 0700)."""
    base = Path(tempfile.mkdtemp(prefix="mom-checkpoint-test-", dir="/tmp"))
    base.chmod(0o755)
    return base


def remove_base(base: Path) -> None:
    # rm's own walk is iterative: the security scenarios leave folder trees thousands of levels deep
    subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


def quote(args: Sequence[object]) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def kill_session(session_id: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(session_id, signal.SIGKILL)


class RecordingLog:
    """A logger (platform.log.Logger) that keeps each event and its fields, for tests to look at."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    debug = info = warning = error = exception = _record

    def bind(self, **_fields: Any) -> RecordingLog:
        return self


@functools.cache  # once per process: criu check takes a moment
def criu_problem() -> str | None:
    """Why real CRIU cannot run here (root, CRIU >= 4 installed, ``criu check`` passing), or None: the
    suite's gate for real-CRIU tests, and the benchmark's."""
    if os.geteuid() != 0:
        return "needs root"
    for binary in ("/usr/local/sbin/criu", "/usr/sbin/criu", "/sbin/criu"):
        if os.access(binary, os.X_OK):
            break
    else:
        return "criu is not installed (make criu)"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    major = version.split("Version:")[-1].strip().split(".")[0] if "Version:" in version else ""
    if not major.isdigit() or int(major) < 4:
        return f"needs CRIU >= 4, found {version.strip() or 'nothing'}"
    check = subprocess.run([binary, "check"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        return f"criu check fails: {(check.stderr or check.stdout).strip()[-200:]}"
    return None


def inside_pid(pid: int) -> int:
    """A process's PID in its own PID namespace (the innermost of NSpid)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise AssertionError(f"no NSpid for {pid}")


def restored_by(restart_pid: int) -> dict[int, int]:
    """The job's processes a restart runs, in the PID namespace it made for them: {PID as the job sees
    it: PID on the node} (the namespace's holder, root's, left out)."""
    found = {}
    try:
        below = psutil.Process(restart_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    for proc in below:
        try:
            if proc.uids().real != 0 and proc.status() != psutil.STATUS_ZOMBIE:
                found[inside_pid(proc.pid)] = proc.pid
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            continue
    return found


def without_namespaces() -> dict[str, Any]:
    """Config keys for CRIU restores beside the node's processes, as before issue 28 (job-user mode)."""
    return {"backends.criu.run_as": "job-user", "backends.criu.pid_namespace": False}


def seen_as(top: int, inside: int) -> int | None:
    """The descendant of ``top`` (not root's) that its PID namespace knows as ``inside``, on the node."""
    for pid in [top, *restored_by(top).values()]:
        with contextlib.suppress(OSError, AssertionError):
            if inside_pid(pid) == inside and psutil.Process(pid).uids().real != 0:
                return pid
    return None


def wait_restored_as(
    restart: subprocess.Popen[bytes], pids: Sequence[int], timeout: float = 30
) -> dict[int, int]:
    """Wait until the restart has given the job back these PIDs, as the job sees them (the exec PID
    first, a child of the restart process, in a PID namespace of its own); {inside: on the node}."""
    deadline = time.monotonic() + timeout
    while not set(pids) <= set(found := restored_by(restart.pid)):
        assert time.monotonic() < deadline and restart.poll() is None, "the job was not restored"
        time.sleep(0.05)
    root = found[pids[0]]
    assert psutil.Process(root).ppid() == restart.pid
    assert os.readlink(f"/proc/{root}/ns/pid") != os.readlink("/proc/self/ns/pid"), "not in a namespace"
    return found


def wait_not_running(pids: Sequence[int], what: str, timeout: float = 10) -> None:
    """Wait until none of these processes runs (a zombie waits for its parent or init to reap it)."""
    deadline = time.monotonic() + timeout
    while alive := [pid for pid in pids if is_running(pid)]:
        assert time.monotonic() < deadline, f"{what}: {alive}"
        time.sleep(0.05)


def is_running(pid: int) -> bool:
    """Whether the process runs (a zombie has ended, though its pid is still taken)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def numbers(text: str) -> list[int]:
    """The numbers an application wrote, one a line (the job shell's own messages left out)."""
    return [int(line) for line in text.splitlines() if line.strip().isdigit()]

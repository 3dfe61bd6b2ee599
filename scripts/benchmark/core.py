"""What every family of rows shares: series and their statistics, rows, running contenders side by side,
running programs the way pbs_mom and the hook run them, and the bench (work folder, node set-ups)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from mom_checkpoint.platform.environment import child_environ  # the checkpointer's own environment
from tests.helpers import MOM_ENV, Job, Site, User, installed

from . import ROOT

TICKER = ROOT / "tests" / "apps" / "ticker.py"
DIRTIER = ROOT / "tests" / "apps" / "dirtier.py"  # the ticker's lines, random memory, rewritten on demand
MIB = 1 << 20
SETPRIV = "/usr/bin/setpriv"
CRIU = next(
    (p for p in ("/usr/local/sbin/criu", "/usr/sbin/criu", "/sbin/criu") if os.access(p, os.X_OK)),
    "/usr/local/sbin/criu",
)
DUMP_CAPS = "+checkpoint_restore,+sys_ptrace"
RESTORE_CAPS = "+checkpoint_restore,+sys_ptrace,+setpcap"
KEEP = 2  # generations the hook keeps in the CRIU rows (and raw criu's images, for the same footprint)

# What the hook imports for a call (the modules main() imports), and structlog imported the hook's own way.
HOOK_IMPORTS = (
    "import mom_checkpoint.cli.checkpoint, mom_checkpoint.batch.calls, mom_checkpoint.platform.config, "
    "mom_checkpoint.platform.log, mom_checkpoint.commands.checkpoint, mom_checkpoint.backends.psnc"
)
MAKE_LOGGER = "; mom_checkpoint.platform.log.make_logger('/dev/null')"
DUMP_IMPORTS = HOOK_IMPORTS + ", mom_checkpoint.backends.criu" + MAKE_LOGGER

# The programs are started as the deb and rpm packages start them (scripts/build-deb.sh): python3 -I -S,
# the libraries' folder first on the path; here the project and the development venv's site-packages.
# So no site, .pth files or editable-install finder in the figures: what a node running the packages pays.
PACKAGED_PATH = [str(ROOT), sysconfig.get_path("purelib")]
PACKAGED_PREFIX = f"import sys\nsys.path[:0] = {PACKAGED_PATH!r}\n"
PACKAGED_WRAPPER = """#!{python} -IS
# {program}, started as the packages start it.
{prefix}from mom_checkpoint.cli.{module} import main

sys.exit(main())
"""
PACKAGED_MODULES = {"mom-checkpoint": "checkpoint", "mom-restart": "restart"}

# The seed's hook, section 5 of "How to checkpoint application in cluster!", exactly as published (its
# literal `job_id` included). The benchmark changes two paths only: chkpnt is the stand-in, and
# /var/spool/checkpoint is a folder of the benchmark's own.
SEED_SCRIPT = """#!/bin/sh

job_pid=$1
job_id=$2
exec_pid=`/bin/ps -ef | /usr/bin/grep $1 | /usr/bin/awk '{ if ($3 == PATTERN)
    print $2; }' PATTERN=$job_pid`
OUTPUT_DIR=/var/spool/checkpoint/$exec_pid.job_id

/usr/local/bin/chkpnt -q -p $exec_pid -od $OUTPUT_DIR
"""
SEED_CHKPNT = "/usr/local/bin/chkpnt"
SEED_SPOOL = "/var/spool/checkpoint"
# The seed's discovery alone: its first lines, then the exec PID it found.
SEED_DISCOVERY = SEED_SCRIPT.split("OUTPUT_DIR=", maxsplit=1)[0] + 'echo "$exec_pid"\n'


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def python() -> str:
    """The interpreter the installed programs run on."""
    return str(installed("mom-checkpoint").parent / "python")


@functools.cache
def packaged_dir() -> Path:
    """A folder of root's for the wrappers, made with an unpredictable name (never one a user could
    have made first in /tmp and filled with programs root would run), removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="mom-checkpoint-bench-sbin."))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def packaged(program: str) -> Path:
    """``program`` as the packages install it (PACKAGED_WRAPPER), written once into a root folder."""
    path = packaged_dir() / program
    if not path.exists():
        text = PACKAGED_WRAPPER.format(
            python=python(), program=program, prefix=PACKAGED_PREFIX, module=PACKAGED_MODULES[program]
        )
        path.write_text(text)
        path.chmod(0o755)
    return path


# -- series, side by side -----------------------------------------------------------------------------------
@dataclass
class Series:
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)


def alternate(n: int, *contenders: Callable[[], None]) -> Iterator[int]:
    """Run the contenders in turn, n rounds, every other round in reverse order (A B, B A, A B, ...), so
    that none is always first: on this machine the first of a pair came out about 10 % slower, whichever
    contender it was (seen with the freeze row run both ways round). Yields after each round."""
    for i in range(n):
        for run in contenders if i % 2 == 0 else contenders[::-1]:
            run()
        yield i


def pairs(n: int, first: Callable[[], float], second: Callable[[], float]) -> tuple[Series, Series]:
    """Two timed contenders, alternately (see alternate()): their results."""
    a, b = Series(), Series()
    for _ in alternate(n, lambda: a.add(first()), lambda: b.add(second())):
        pass
    return a, b


# -- figures and rows ---------------------------------------------------------------------------------------
Fmt = Callable[[float], str]


def cost_ms(value: float) -> str:
    """A difference of two medians (s) as a cost: below 1 ms it is this machine's noise, and says so."""
    return f"{ms(value)} ms" if value >= 0.001 else f"nothing measurable ({ms(value)} ms, within the noise)"


def ms(value: float) -> str:
    return f"{value * 1000:.1f}" if value < 0.1 else f"{value * 1000:.0f}"


def sec(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def num(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}".rstrip("0").rstrip(".")


def size_label(mib: int) -> str:
    return f"{mib} MiB" if mib < 1024 else f"{mib // 1024} GiB"


@dataclass
class Row:
    number: str
    measure: str
    ours: Series
    theirs: Series | None
    fmt: Fmt
    target: str = ""
    limit: float | None = (
        None  # the ratio (ours / theirs) must not exceed this, or ours alone when theirs is None
    )
    higher_is_better: bool = False

    @property
    def ratio(self) -> float | None:
        if self.theirs is None or not self.theirs.values or not self.ours.values or self.theirs.median == 0:
            return None
        return self.ours.median / self.theirs.median

    def cell(self, series: Series | None) -> str:
        if series is None or not series.values:
            return "-"
        if len(series.values) == 1:
            return self.fmt(series.median)
        return f"{self.fmt(series.median)} ({self.fmt(series.lo)}-{self.fmt(series.hi)})"

    def verdict(self) -> str:
        if self.limit is None:
            return self.target or "-"
        value = self.ratio if self.theirs is not None else (self.ours.median if self.ours.values else None)
        if value is None:
            return f"{self.target}: no figure"
        met = value >= self.limit if self.higher_is_better else value <= self.limit
        interval = self.ratio_interval()
        if interval is None:
            return f"{self.target}: {'met' if met else 'NOT met'}"
        low, high = interval
        return (
            f"{self.target}: {'met' if met else 'NOT met'} (90 % interval of the ratio {low:.2f}-{high:.2f})"
        )

    def ratio_interval(self) -> tuple[float, float] | None:
        """A 90 % bootstrap interval of the ratio of the medians, resampling whole rounds (each round ran
        both contenders under the same conditions): how far the ratio could move by chance alone."""
        if (
            self.theirs is None
            or len(self.ours.values) != len(self.theirs.values)
            or len(self.ours.values) < 4
        ):
            return None
        rng = random.Random(0)  # noqa: S311  (resampling, not secrets; fixed seed: the same figures)
        n = len(self.ours.values)
        ratios = []
        for _ in range(2000):
            picks = [rng.randrange(n) for _ in range(n)]
            theirs = statistics.median(self.theirs.values[i] for i in picks)
            if theirs > 0:
                ratios.append(statistics.median(self.ours.values[i] for i in picks) / theirs)
        ratios.sort()
        return ratios[int(0.05 * len(ratios))], ratios[int(0.95 * len(ratios)) - 1]

    def line(self) -> str:
        ratio = self.ratio
        shown = "-" if ratio is None else f"{ratio:.2f}"
        measure = self.measure.replace("|", "\\|")  # a | inside a cell ends it
        return (
            f"| {self.number} | {measure} | {self.cell(self.ours)} | {self.cell(self.theirs)} | {shown} "
            f"| {self.verdict()} |"
        )


TABLE_HEAD = [
    "| # | measure (mom-checkpoint vs the alternative) | mom-checkpoint: median (min-max) "
    "| alternative: median (min-max) | ratio | target |",
    "|---|---|---|---|---|---|",
]


def table(rows: list[Row]) -> list[str]:
    return [*TABLE_HEAD, *[row.line() for row in rows]]


# -- running things the way pbs_mom does --------------------------------------------------------------------
@dataclass
class Call:
    seconds: float
    returncode: int
    output: str  # what pbs_mom reads back: stderr


def as_pbs_mom(
    program: Path | str, args: Sequence[object], config: Path, extra_env: dict[str, str] | None = None
) -> Call:
    """popen("<program> <args> 2>&1 1>/dev/null") as root with pbs_mom's environment, timed from outside:
    the same for the hook and for the seed's script (tests.helpers.call_hook does the same)."""
    command = " ".join([str(program), *[str(a) for a in args]]) + " 2>&1 1>/dev/null"
    env = {**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(config), **(extra_env or {})}
    started = time.perf_counter()
    proc = subprocess.run(
        ["/bin/sh", "-c", command],
        check=False,
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=900,
    )
    seconds = time.perf_counter() - started
    return Call(seconds, proc.returncode, proc.stdout.decode(errors="replace"))


def check(call: Call, what: str) -> Call:
    if call.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {call.returncode}): {call.output.strip()[-300:]}")
    return call


# -- running the checkpointer raw, the way the hook runs it -------------------------------------------------
def raw_log(command: list[str], name: str) -> list[str]:
    """The hook's or mom-restart's criu command line for a raw run: its log into a file ``name`` in
    the work folder, as a plain criu call writes it (the product hands criu a pipe of its own)."""
    words = list(command)
    if "--log-file" in words:
        words[words.index("--log-file") + 1] = name
    return words


def job_user_prefix(user: User, caps: str) -> list[str]:
    """What the hook puts before the checkpointer's command line with run_as = "job-user"."""
    return [
        SETPRIV,
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        "--init-groups",
        f"--inh-caps={caps}",
        f"--ambient-caps={caps}",
        "--",
    ]


def run_raw(argv: Sequence[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """A checkpointer run the way the hook runs it (environment.Runner): clean environment, own process
    group, umask 077, stdin /dev/null, stdout and stderr read, cwd / (pbs_mom's)."""
    started = time.perf_counter()
    proc = subprocess.run(
        list(argv),
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_environ(),
        cwd="/",
        umask=0o077,
        process_group=0,
        timeout=900,
    )
    return time.perf_counter() - started, proc


# Starts raw criu the way the hook would, minus the hook: a Python process that first imports what the hook
# imports (so that criu starts as long after the launch as the hook's does: on this VM the time since memory
# was last freed changes how fast a dump writes), then runs the command exactly as environment.Runner does,
# timing criu's own run. argv[1]: where to write the result; argv[2]: the command line, as JSON.
RAW_LAUNCHER = r"""
import json, subprocess, sys, time
import mom_checkpoint.cli.checkpoint, mom_checkpoint.batch.calls
import mom_checkpoint.platform.config, mom_checkpoint.platform.log
import mom_checkpoint.commands.checkpoint, mom_checkpoint.backends.criu
mom_checkpoint.platform.log.make_logger("/dev/null")  # structlog, imported the way the hook imports it
from mom_checkpoint.platform.environment import child_environ
started = time.perf_counter()
proc = subprocess.run(json.loads(sys.argv[2]), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                      env=child_environ(), cwd="/", umask=0o077, process_group=0)
seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as out:
    json.dump({"seconds": seconds, "returncode": proc.returncode, "stdout": proc.stdout,
               "stderr": proc.stderr[-2000:]}, out)
"""


def run_raw_like_hook(bench: Bench, argv: Sequence[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """run_raw() from a process that starts up like the hook (RAW_LAUNCHER): criu's own run, timed."""
    launcher = bench.base / "raw-launcher.py"
    if not launcher.exists():
        launcher.write_text(RAW_LAUNCHER)
    out = bench.base / "raw-launcher.json"
    subprocess.run(
        [python(), str(launcher), str(out), json.dumps(list(argv))],
        env=MOM_ENV,
        cwd="/",
        stdin=subprocess.DEVNULL,
        check=True,
        timeout=900,
    )
    data = json.loads(out.read_text())
    completed = subprocess.CompletedProcess(
        list(argv), int(data["returncode"]), data["stdout"], data["stderr"]
    )
    return float(data["seconds"]), completed


def frozen_us(stdout: str) -> float | None:
    match = re.search(r"^Frozen time:\s+(\d+)\s+us", stdout, re.M)
    return float(match.group(1)) if match else None


def app_pid(job: Job, program: str) -> int:
    """The PID of the job's process running ``program`` (a file name on its command line)."""
    for proc in job.processes():
        with contextlib.suppress(psutil.Error):
            if any(part.endswith(f"/{program}") for part in proc.cmdline()):
                return proc.pid
    raise RuntimeError(f"job {job.job_id} runs no {program}")


def wait_line(job: Job, prefix: str, timeout: float = 120) -> str:
    """Wait until a line of the job's output starts with ``prefix``: the first such line."""
    deadline = time.monotonic() + timeout
    while True:
        for line in job.output.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job.job_id} printed no line {prefix!r}... in {timeout:.0f} s")
        time.sleep(0.01)


@contextlib.contextmanager
def loop_ext4(mount_point: Path, mib: int) -> Iterator[Path]:
    """An ext4 file system of ``mib`` MiB of its own, on a loop device (a sparse file beside the mount
    point), mounted at ``mount_point`` (made), root's 0700: the vault as a node sees it, another file
    system than the spool's. Unmounted (lazily) and its file removed at the end."""
    backing = mount_point.with_name(f"{mount_point.name}.img")
    mount_point.mkdir()
    subprocess.run(["/usr/bin/truncate", "-s", f"{mib}M", str(backing)], check=True)
    subprocess.run(["/sbin/mkfs.ext4", "-q", "-F", str(backing)], check=True, capture_output=True)
    subprocess.run(["/bin/mount", "-o", "loop", str(backing), str(mount_point)], check=True)
    try:
        mount_point.chmod(0o700)
        yield mount_point
    finally:
        subprocess.run(["/bin/umount", "-l", str(mount_point)], check=False)
        backing.unlink(missing_ok=True)


# -- what the hook leaves: generations, manifests, its log --------------------------------------------------
def newest_manifest(site: Site, job_id: str) -> tuple[Path, dict[str, Any]]:
    generation = site.generations(job_id)[-1]
    manifest: dict[str, Any] = json.loads((generation / "manifest.json").read_text())
    return generation, manifest


def events(site: Site, name: str) -> list[dict[str, Any]]:
    """The log's events called ``name``, oldest first."""
    return [e for e in site.log_events() if e.get("event") == name]


# -- files and processes ------------------------------------------------------------------------------------
def disk_bytes(path: Path) -> int:
    """Bytes allocated below ``path`` (like du), 0 if it is gone; files may vanish while it counts."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*filenames, *dirnames]:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def fsync_tree(path: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def settle() -> None:
    """Let the last checkpoint's pages reach the disk before the next dump (CRIU.md point 6)."""
    os.sync()


def wait_for_idle_cpu(limit_s: float = 60, busy_below: float = 0.15) -> float:
    """Wait until the machine's CPUs are idle (all of them together busy less than ``busy_below`` of the
    time over half a second), at most ``limit_s``; the busy share last seen."""
    deadline = time.monotonic() + limit_s
    while True:
        before = psutil.cpu_times()
        time.sleep(0.5)
        after = psutil.cpu_times()
        total = sum(after) - sum(before)
        idle = (after.idle + after.iowait) - (before.idle + before.iowait)
        busy = 1 - idle / total if total > 0 else 0.0
        if busy < busy_below or time.monotonic() > deadline:
            return busy
        say(f"waiting for the CPUs to calm down ({busy:.0%} busy)")


def pids_gone(pids: Sequence[int], timeout: float = 60) -> None:
    """Wait until no process (zombies included) holds these PIDs: CRIU restores the original PIDs."""
    deadline = time.monotonic() + timeout
    while any(psutil.pid_exists(p) for p in pids):
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # ours when CRIU made it our child (restore -d -S)
        if time.monotonic() > deadline:
            raise RuntimeError(f"PIDs {list(pids)} still taken after {timeout:.0f}s")
        time.sleep(0.02)


def qhold(site: Site, job: Job) -> None:
    """A qhold as pbs_mom runs it (the hook with SIGNAL 15: CRIU ends the job), then every process of
    the job gone, zombies too: its PIDs are free for a restore."""
    check(
        as_pbs_mom(packaged("mom-checkpoint"), site.torque_args(job, signal_number=15), site.config), "qhold"
    )
    leftovers = [p.pid for p in job.processes(zombies=True)]
    job.stop()
    pids_gone(leftovers)


def kill_tree(pids: Sequence[int]) -> None:
    """SIGKILL the leaves first, so each parent reaps its child before it dies itself."""
    for pid in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(timeout=2)


def process_count() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


class TickLog:
    """The ticker's output: one CLOCK_MONOTONIC timestamp (microseconds) a line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def offset(self) -> int:
        return self.path.stat().st_size

    def stamps(self, since: int) -> list[float]:
        with open(self.path, "rb") as fh:
            fh.seek(max(0, since - 64))
            data = fh.read()
        lines = data.split(b"\n")[1:-1]  # the first may be cut, the last may be unfinished
        return [int(line) / 1e6 for line in lines if line.strip().isdigit()]

    def max_gap(self, since: int, start: float, end: float) -> float:
        """The largest gap between two ticks that overlaps [start, end] (time.monotonic seconds)."""
        stamps = self.stamps(since)
        gaps = [b - a for a, b in itertools.pairwise(stamps) if b > start and a < end]
        if not gaps:
            raise RuntimeError("the application wrote no timestamps around the dump")
        return max(gaps)


# -- the bench: work folder, node set-ups, clean-up ---------------------------------------------------------
@dataclass
class Options:
    quick: bool
    reps: int | None
    only: set[str]


class Bench:
    def __init__(self, options: Options, user: User) -> None:
        self.options = options
        self.user = user
        self.base = Path(tempfile.mkdtemp(prefix="mom-checkpoint-bench-"))
        self.base.chmod(0o755)  # the job's user passes through to its job folders
        self.rows: list[Row] = []
        self.sections: dict[str, list[str]] = {}  # each family's section of the document, by its name
        self.notes: list[str] = []  # "where the time goes", a sentence or two per row
        self.failures: list[str] = []
        self.sites: list[Site] = []
        self.sleepers: list[int] = []
        self.block = os.urandom(MIB)
        self.cache_speed: tuple[float, float] | None = None

    def reps(self, full: int, quick: int) -> int:
        if self.options.reps is not None:
            return self.options.reps
        return quick if self.options.quick else full

    def site(self, name: str) -> Site:
        base = self.base / name
        base.mkdir(mode=0o755)
        site = Site(base, self.user)
        self.sites.append(site)
        return site

    def user_dir(self, path: Path) -> Path:
        """A folder the job's user owns (raw criu runs as that user and writes there)."""
        path.mkdir(mode=0o700, parents=True)
        os.chown(path, self.user.uid, self.user.gid)
        return path

    def start_app(self, site: Site, job_id: str, mib: int) -> Job:
        """A job started the way pbs_mom does, running the ticker instead of the counter; the ballast
        is resident before its first line."""
        return site.start_job(job_id, self.user, {"TICKER_MIB": str(mib)}, app=TICKER, wait_s=120)

    def start_dirtier(self, site: Site, job_id: str, mib: int, **env: str) -> Job:
        """A job like start_app's, running tests/apps/dirtier.py: the ticker's lines, and ``mib`` MiB of
        memory no two pages of which are alike (the ticker's is one KiB repeated: a vault that cuts it
        into chunks stores one chunk for all of it), resident before its first line; ``env``: more of
        its settings (DIRTIER_KIND, DIRTIER_FRACTION, ...)."""
        settings = {"DIRTIER_MIB": str(mib), **env}
        return site.start_job(job_id, self.user, settings, app=DIRTIER, wait_s=600)

    def fresh_page_cache(self) -> None:
        """Give the next dump the same start as any other: sync, drop the page cache, and read back what
        both contenders run (the hook's modules, setpriv, criu).

        This machine's memory is backed lazily by its host: writing into RAM not used lately runs at a
        fraction of the speed of writing into RAM freed a moment ago (see page_cache_speed()), and a
        dump writes its image into the page cache. So whichever dump happened to follow a deletion
        closely came out faster, and which one that was depended on the order of the runs. After
        dropping the page cache every dump finds the same large pool of just-freed memory (tried: the
        dumps of a job then stay within a few percent of each other, even when they start later)."""
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        subprocess.run([python(), "-c", DUMP_IMPORTS], env=MOM_ENV, cwd="/", check=True)
        for program in (SETPRIV, CRIU):
            subprocess.run([program, "--version"], capture_output=True, check=False)

    @contextlib.contextmanager
    def warm_memory(self, size: int, started: Callable[[], bool]) -> Iterator[None]:
        """Give the next dump (or restore) the same start as any other: memory the VM has already backed.

        This machine's memory is backed lazily by its host: writing into RAM never used before, or freed
        more than a few hundred milliseconds ago, runs at a fraction of the speed of writing into RAM freed
        a moment ago (see page_cache_speed()). So whichever dump happened to follow a deletion closely was
        fast, and raw criu (which starts at once) was favoured over the hook (whose interpreter starts
        first). Now, before every dump or restore of either contender, ``size`` bytes are written to a file
        (and fsync'd: no dirty pages left), and a thread deletes it the moment criu has started
        (``started()``: its log file exists), so that both find the same just-freed page cache. (Freed
        anonymous memory does not do it: tried, dumps stayed slow.)"""
        path = self.base / "warm-up"
        with open(path, "wb") as fh:
            for _ in range(size // MIB + 1):
                fh.write(self.block)
            fh.flush()
            os.fsync(fh.fileno())  # no dirty pages of its own left to write back during the dump
        done = threading.Event()

        def release() -> None:
            deadline = time.monotonic() + 600
            while not done.is_set() and time.monotonic() < deadline:
                if started():
                    break
                time.sleep(0.0005)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

        thread = threading.Thread(target=release, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def close(self) -> None:
        self.stop_sleepers()
        for site in self.sites:
            with contextlib.suppress(Exception):
                site.stop_jobs()
        shutil.rmtree(self.base, ignore_errors=True)

    # cheap sleeping processes, each in its own session, to give the node many processes
    def grow_processes(self, total: int) -> int:
        now = process_count()
        for _ in range(max(0, total - now)):
            pid = os.posix_spawn("/bin/sleep", ["sleep", "100000"], {"PATH": "/bin:/usr/bin"}, setsid=True)
            self.sleepers.append(pid)
        return process_count()

    def stop_sleepers(self) -> None:
        for pid in self.sleepers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.sleepers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.sleepers.clear()


# -- families of rows ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """One family of rows (a module of this package): the name --only knows it by, what runs it (adding
    rows, notes and its section, bench.sections[name]), and that section's heading and opening lines in
    the document (no heading: the family adds rows only)."""

    name: str
    run: Callable[[Bench], None]
    title: str = ""
    intro: tuple[str, ...] = ()

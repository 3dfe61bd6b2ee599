"""Benchmarks: the hook against the seed's script and raw CRIU, side by side; writes docs/PERFORMANCE.md.

    .venv/bin/python scripts/benchmark.py                 the full run: prints the table, writes the document
    .venv/bin/python scripts/benchmark.py --quick         fewer repetitions and smaller jobs (development)
    .venv/bin/python scripts/benchmark.py --only freeze --reps 3 --output /tmp/perf.md

Rows (--only takes these names, comma-separated): overhead (1: the hook against the seed's shell script on a
stand-in chkpnt, and where its time goes), discovery (2: finding the exec PID among 200, 2,000 and 10,000
processes), freeze (3 and 4: freeze seen by the application and CRIU's "Frozen time", wall time, throughput,
post-dump work, and the hook's own peak RSS, from the same runs), hashing (4: the hook's hashing against plain
hashlib.sha256, and whether it uses every core), restore (5: mom-restart against raw criu restore), spool (6:
bytes on disk over 20 periodic checkpoints with keep=2).

Every row runs its two contenders alternately (A B, B A, A B, ...) on the same job in one run, reports both
medians, their range (min-max) and the ratio mom-checkpoint / alternative. Needs root, CRIU >= 4 and momtest,
like `make test`. Jobs run as momtest with run_as = "job-user" (root here lacks CAP_SYS_RESOURCE); raw criu
gets exactly the hook's command line with the same setpriv prefix. Without --output, a run with --quick or
--only prints the table and leaves docs/PERFORMANCE.md alone. No assertion here is about time: a contender
that fails (wrong exit status, nothing found) stops its row with the reason. Before each dump it drops the
page cache (/proc/sys/vm/drop_caches; see Bench.fresh_page_cache): run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import platform
import random
import re
import resource
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
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from mom_checkpoint.platform.environment import child_environ  # noqa: E402  (the checkpointer's own environment)
from tests.conftest import _criu_problem  # noqa: E402  (the suite's own gate: root and CRIU >= 4)
from tests.helpers import (  # noqa: E402
    MOM_ENV,
    TEST_USER,
    Job,
    Site,
    User,
    installed,
    start_restart,
)

TICKER = ROOT / "tests" / "apps" / "ticker.py"
MIB = 1 << 20
SETPRIV = "/usr/bin/setpriv"
CRIU = next(
    (p for p in ("/usr/local/sbin/criu", "/usr/sbin/criu", "/sbin/criu") if os.access(p, os.X_OK)),
    "/usr/local/sbin/criu",
)
DUMP_CAPS = "+checkpoint_restore,+sys_ptrace"
RESTORE_CAPS = "+checkpoint_restore,+sys_ptrace,+setpcap"
KEEP = 2  # generations the hook keeps in the CRIU rows (and raw criu's images, for the same footprint)
ROWS = ("overhead", "discovery", "freeze", "hashing", "restore", "spool", "vault")
ALIASES = {"wall": "freeze", "throughput": "freeze", "memory": "freeze"}

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


def python() -> str:
    return str(installed("mom-checkpoint").parent / "python")


@functools.cache
def _packaged_dir() -> Path:
    """A folder of root's for the wrappers, made with an unpredictable name (never one a user could
    have made first in /tmp and filled with programs root would run), removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="mom-checkpoint-bench-sbin."))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def packaged(program: str) -> Path:
    """``program`` as the packages install it (PACKAGED_WRAPPER), written once into a root folder."""
    path = _packaged_dir() / program
    if not path.exists():
        text = PACKAGED_WRAPPER.format(
            python=python(), program=program, prefix=PACKAGED_PREFIX, module=PACKAGED_MODULES[program]
        )
        path.write_text(text)
        path.chmod(0o755)
    return path


# Runs the installed hook's own main() with the 8 arguments, times its phases by wrapping the functions that
# do them, and writes what it measured (and its own peak RSS) to $BENCH_PHASES_OUT as JSON.
PHASES_WRAPPER = r"""
import json, os, resource, sys, time
T0 = time.perf_counter()
import mom_checkpoint.cli.checkpoint as cli
import mom_checkpoint.backends.base as base
import mom_checkpoint.backends.psnc as psnc
import mom_checkpoint.batch.calls
import mom_checkpoint.commands.checkpoint as cc
import mom_checkpoint.platform.config as config
import mom_checkpoint.processes.discovery as discovery
import mom_checkpoint.platform.log as log
import mom_checkpoint.spool.storage as storage
import filelock
T1 = time.perf_counter()
# what the hook imports while the checkpointer runs (commands.checkpoint.AFTER_THE_DUMP): timed apart
for name in cc.AFTER_THE_DUMP:
    __import__(name)
import mom_checkpoint.image.hashing as hashing
import mom_checkpoint.image.manifest as manifest
T1b = time.perf_counter()
spent = {}
fsync = [0.0, 0]
def wrap(owner, name, label):
    original = getattr(owner, name)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - started
    setattr(owner, name, timed)
for owner, name, label in [
    (config, "load", "read the config"),
    (log, "make_logger", "set up the log (imports structlog, the hook's own way)"),
    (discovery, "find_job", "find the processes (discovery.find_job)"),
    (cc, "open_checkpoint_dir", "checks: CHECKPOINT_DIR, checkpointer, free space"),
    (base.Backend, "find_binary", "checks: CHECKPOINT_DIR, checkpointer, free space"),
    (cc, "_check_space", "checks: CHECKPOINT_DIR, checkpointer, free space"),
    (filelock.FileLock, "acquire", "locks (job lock, node slot)"),
    (filelock.FileLock, "release", "locks (job lock, node slot)"),
    (storage.Spool, "ensure_root", "spool folders (run, stale, next number, incoming)"),
    (storage.Spool, "open_run", "spool folders (run, stale, next number, incoming)"),
    (storage.Spool, "clean_stale", "spool folders (run, stale, next number, incoming)"),
    (storage.Spool, "next_number", "spool folders (run, stale, next number, incoming)"),
    (storage.Spool, "begin", "spool folders (run, stale, next number, incoming)"),
    (base.Backend, "checkpoint", "the checkpointer's run"),
    (storage.Incoming, "image_files", "hash + fsync the image"),
    (hashing, "digest_files", "hash + fsync the image"),
    (cc._Attempt, "_manifest", "build the manifest"),
    (manifest.Manifest, "to_json", "write + fsync the manifest"),
    (storage.Incoming, "write_manifest", "write + fsync the manifest"),
    (storage.Incoming, "publish", "publish (rename + fsync)"),
    (cc, "write_pointer", "pointer at CHECKPOINT_DIR/CHECKPOINT_NAME"),
    (cc, "_prune", "prune old generations"),
]:
    wrap(owner, name, label)
real_fsync = os.fsync
def counted_fsync(fd):
    started = time.perf_counter()
    try:
        return real_fsync(fd)
    finally:
        fsync[0] += time.perf_counter() - started
        fsync[1] += 1
os.fsync = counted_fsync
status = cli.main(sys.argv[1:])
T2 = time.perf_counter()
with open(os.environ["BENCH_PHASES_OUT"], "w") as out:
    json.dump({
        "status": status,
        "imports_s": T1 - T0,
        "after_dump_imports_s": T1b - T1,
        "main_s": T2 - T1b,
        "phases": spent,
        "fsync_s": fsync[0],
        "fsync_calls": fsync[1],
        "maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "maxrss_children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }, out)
sys.exit(status)
"""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pairs(n: int, first: Callable[[], float], second: Callable[[], float]) -> tuple[Series, Series]:
    """Two timed contenders, alternately (see alternate()): their results."""
    a, b = Series(), Series()
    for _ in alternate(n, lambda: a.add(first()), lambda: b.add(second())):
        pass
    return a, b


def alternate(n: int, *contenders: Callable[[], None]) -> Iterator[int]:
    """Run the contenders in turn, n rounds, every other round in reverse order (A B, B A, A B, ...), so
    that none is always first: on this machine the first of a pair came out about 10 % slower, whichever
    contender it was (seen with the freeze row run both ways round). Yields after each round."""
    for i in range(n):
        for run in contenders if i % 2 == 0 else contenders[::-1]:
            run()
        yield i


# -- figures -------------------------------------------------------------------------------------------------
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


# -- running things the way pbs_mom does ---------------------------------------------------------------------
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


IMAGE_FD = 200  # where a raw restore finds the generation's image folder (as mom-restart's -D does)
IMAGE_FD_PATH = f"/proc/self/fd/{IMAGE_FD}"


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
    python = str(installed("mom-checkpoint").parent / "python")
    subprocess.run(
        [python, str(launcher), str(out), json.dumps(list(argv))],
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


def newest_manifest(site: Site, job_id: str) -> tuple[Path, dict[str, Any]]:
    generation = site.generations(job_id)[-1]
    manifest: dict[str, Any] = json.loads((generation / "manifest.json").read_text())
    return generation, manifest


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


def kill_tree(pids: Sequence[int]) -> None:
    """SIGKILL the leaves first, so each parent reaps its child before it dies itself."""
    for pid in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(timeout=2)


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
        self.sections: dict[str, list[str]] = {}
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
        python = str(installed("mom-checkpoint").parent / "python")
        subprocess.run([python, "-c", DUMP_IMPORTS], env=MOM_ENV, cwd="/", check=True)
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


def process_count() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


# -- row 1: hook overhead against the seed's script ---------------------------------------------------------
def row_overhead(bench: Bench) -> None:
    site = bench.site("overhead")
    chkpnt = site.standin("chkpnt", STANDIN_IMAGE_BYTES="1024")
    site.configure(backend="psnc", keep=2, **{"backends.psnc.chkpnt": str(chkpnt)})
    seed_spool = site.base / "seed-spool"
    seed_spool.mkdir(mode=0o755)
    seed = site.base / "mom-checkpoint.sh"
    seed.write_text(SEED_SCRIPT.replace(SEED_CHKPNT, str(chkpnt)).replace(SEED_SPOOL, str(seed_spool)))
    seed.chmod(0o755)
    job = site.start_job("1.head")
    hook = packaged("mom-checkpoint")
    seed_image = seed_spool / f"{job.exec_pid()}.job_id" / f"ckpt.{job.exec_pid()}"
    alone = site.base / "alone"

    def run_hook() -> float:
        return check(as_pbs_mom(hook, site.torque_args(job), site.config), "mom-checkpoint").seconds

    def run_seed() -> float:
        call = check(as_pbs_mom(seed, site.torque_args(job), site.config), "the seed's script")
        if not seed_image.exists():
            raise RuntimeError(f"the seed's script left no image at {seed_image}")
        return call.seconds

    def run_alone() -> float:
        argv = [str(chkpnt), "-q", "-p", str(job.exec_pid()), "-od", str(alone)]
        return check(as_pbs_mom(" ".join(argv), [], site.config), "the stand-in").seconds

    for warm_up in (run_hook, run_seed, run_alone):  # page cache, .pyc files
        warm_up()
    a, b, c = Series(), Series(), Series()
    n = bench.reps(15, 5)
    say(f"[1] hook overhead: {n} alternations of mom-checkpoint / seed script / stand-in alone")
    for _ in alternate(n, lambda: a.add(run_hook()), lambda: b.add(run_seed()), lambda: c.add(run_alone())):
        pass
    bench.rows.append(
        Row("1", "checkpoint call, psnc stand-in chkpnt (ms): mom-checkpoint vs the seed's script", a, b, ms,
            target="ratio <= 3 (idle node)", limit=3.0)
    )  # fmt: skip
    bench.rows.append(Row("1", "of which the stand-in chkpnt alone (ms)", c, None, ms))
    busy_hook, busy_seed = Series(), Series()
    try:  # a busy node: the seed's ps -ef | grep reads every process, the hook walks the job's tree
        count = bench.grow_processes(process_count() + 2000)
        say(f"[1] hook overhead among {count:,} processes: {n} alternations of mom-checkpoint / seed script")
        for _ in alternate(n, lambda: busy_hook.add(run_hook()), lambda: busy_seed.add(run_seed())):
            pass
    finally:
        bench.stop_sleepers()
    bench.rows.append(
        Row("1", f"the same among {count:,} processes (2,000 more) (ms): mom-checkpoint vs the seed's script",
            busy_hook, busy_seed, ms, target="ratio <= 1.0", limit=1.0)
    )  # fmt: skip
    bench.sections["overhead"] = overhead_breakdown(bench, site, job, hook=a, seed=b, alone=c)


def overhead_breakdown(
    bench: Bench, site: Site, job: Job, *, hook: Series, seed: Series, alone: Series
) -> list[str]:
    """Where the hook's time goes: interpreter start, imports (by package), and each phase of main()."""
    python = str(installed("mom-checkpoint").parent / "python")
    n = bench.reps(9, 3)
    start_site, start_bare = Series(), Series()
    for _ in range(n):
        start_site.add(check(as_pbs_mom(f"{python} -c pass", [], site.config), "python").seconds)
        start_bare.add(check(as_pbs_mom(f"{python} -I -S -c pass", [], site.config), "python -I -S").seconds)
    wrapper = site.base / "phases.py"
    wrapper.write_text(PACKAGED_PREFIX + PHASES_WRAPPER)
    out = site.base / "phases.json"
    runs: list[dict[str, Any]] = []
    for _ in range(n):
        call = as_pbs_mom(
            f"{python} -I -S {wrapper}", site.torque_args(job), site.config, {"BENCH_PHASES_OUT": str(out)}
        )
        check(call, "mom-checkpoint (phase timing)")
        runs.append(json.loads(out.read_text()))
    groups = import_groups(site, job, python, bench.reps(5, 2))
    without = import_costs(python, n)

    imports = statistics.median(r["imports_s"] for r in runs)
    after_dump = statistics.median(r["after_dump_imports_s"] for r in runs)
    main = statistics.median(r["main_s"] for r in runs)
    labels: list[str] = []
    for r in runs:
        labels += [label for label in r["phases"] if label not in labels]
    phases = {label: statistics.median(r["phases"].get(label, 0.0) for r in runs) for label in labels}
    fsync = statistics.median(r["fsync_s"] for r in runs)
    fsyncs = int(statistics.median(r["fsync_calls"] for r in runs))
    other = max(0.0, main - sum(phases.values()))
    total = hook.median
    interp = start_bare.median  # as the packages start the hook: python -I -S
    rest = max(0.0, total - interp - imports - main)

    def share(value: float) -> str:
        return f"{100 * value / total:.0f} %"

    lines = [
        f"One call of the hook takes {ms(hook.median)} ms (median of {len(hook.values)}), the seed's script "
        f"{ms(seed.median)} ms, the stand-in chkpnt alone {ms(alone.median)} ms (it is a Python script too). "
        f"Medians of {n} further calls, each timed inside the process (a copy of the installed script that "
        "wraps the functions doing each phase). Every program is started as the deb and rpm packages start "
        "it: `python3 -I -S`, the libraries' folder first on the path (no site, no .pth files):",
        "",
        "| phase | ms | share of the call |",
        "|---|---|---|",
        f"| interpreter start and exit (`python -I -S -c pass`) | {ms(interp)} | {share(interp)} |",
        f"| imports of the hook's modules and libraries (before main()) | {ms(imports)} | {share(imports)} |",
        f"| (imports of what only the work after the dump uses: in a call, while the checkpointer runs, so "
        f"within its time; timed apart here) | ({ms(after_dump)}) | - |",
    ]
    for label, value in sorted(phases.items(), key=lambda kv: -kv[1]):
        lines.append(f"| main(): {label} | {ms(value)} | {share(value)} |")
    lines += [
        f"| main(): the rest (argument checks, logging, locks' holder file, summary) | {ms(other)} "
        f"| {share(other)} |",
        f"| /bin/sh, fork/exec, what the outside timer sees beyond these | {ms(rest)} | {share(rest)} |",
        "",
        f"Of main(), {fsyncs} fsync calls took {ms(fsync)} ms (inside the phases above). A start with site "
        f"and the development venv's .pth files (`python -c pass`, {ms(start_site.median)} ms) would add "
        f"{ms(max(0.0, start_site.median - interp))} ms.",
        "",
        "Imports by who pulled them in (`python -X importtime` of the real call, self times summed over the "
        f"import tree and attributed to the outermost library that asked; median of {bench.reps(5, 2)}; "
        "importtime itself inflates them somewhat):",
        "",
        "| imported for | ms |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value / 1000:.1f} |" for name, value in groups]
    base, full, no_structlog, no_filelock, libraries = (without[key].median for key in IMPORT_CASES)
    floor = libraries + alone.median
    budget = (
        f"A call within 3x the seed's leaves {ms(3 * seed.median - floor)} ms beyond it."
        if 3 * seed.median > floor
        else f"3x the seed's call ({ms(3 * seed.median)} ms) is below that floor."
    )
    lines += [
        "",
        f'The same as whole interpreter runs (`python -c "import ..."` of the modules main() imports, median '
        f"of {n}, alternating): `pass` {ms(base)} ms; the hook's modules {ms(full)} ms; without structlog "
        f"{ms(no_structlog)} ms; without structlog and with filelock replaced by an empty module "
        f"{ms(no_filelock)} ms. So structlog, imported the hook's way, costs "
        f"{cost_ms(full - no_structlog)} of every call; without it, filelock costs "
        f"a further {ms(no_structlog - no_filelock)} ms; and everything else the hook imports (its own "
        f"modules, the standard library, psutil) {ms(no_filelock - base)} ms.",
        "",
        f"The floor: an interpreter that imports only the three libraries the project keeps (psutil, "
        f"filelock, and structlog the hook's way) and nothing of mom-checkpoint takes {ms(libraries)} ms "
        f"(one that imports nothing: {ms(base)} ms); with the stand-in chkpnt alone ({ms(alone.median)} ms) "
        f"that is {ms(floor)} ms, {floor / seed.median:.1f}x the seed's whole call, before any of "
        f"mom-checkpoint's own work. {budget} mom-checkpoint's own modules add {ms(full - libraries)} ms of "
        f"imports to the libraries' (Python {platform.python_version()} compiles every generated method of "
        f"their {hook_dataclasses(python)} dataclasses apart), and main()'s work the phases above.",
    ]
    checkpointer = phases.get("the checkpointer's run", 0.0)
    logger = sum(value for label, value in phases.items() if label.startswith("set up the log"))
    bench.notes.append(
        f"Hook overhead (row 1): a call costs {ms(total)} ms against the seed's script's "
        f"{ms(seed.median)} ms on the same stand-in. Interpreter start is {ms(interp)} ms and imports "
        f"{ms(imports)} ms ({100 * imports / total:.0f} % of the call, structlog's import, in setting up "
        f"the log, apart): structlog as the hook imports it (its modules the hook uses, not its package "
        f"__init__) costs {cost_ms(full - no_structlog)}, and filelock {ms(no_structlog - no_filelock)} ms. "
        f"Setting up the log takes {ms(logger)} ms, and the work itself (the rest of main() without "
        f"the checkpointer) {ms(main - checkpointer - logger)} ms."
    )
    return lines


HOOK_IMPORTS = (
    "import mom_checkpoint.cli.checkpoint, mom_checkpoint.batch.calls, mom_checkpoint.platform.config, "
    "mom_checkpoint.platform.log, mom_checkpoint.commands.checkpoint, mom_checkpoint.backends.psnc"
)
# structlog, imported the hook's own way
MAKE_LOGGER = "; mom_checkpoint.platform.log.make_logger('/dev/null')"
DUMP_IMPORTS = HOOK_IMPORTS + ", mom_checkpoint.backends.criu" + MAKE_LOGGER
IMPORT_CASES = {
    "pass": "pass",
    "hook": HOOK_IMPORTS + MAKE_LOGGER,
    "no structlog": HOOK_IMPORTS,
    "no structlog, no filelock": "import sys, types; sys.modules['filelock'] = types.ModuleType('filelock'); "
    + HOOK_IMPORTS,
    # only the three libraries the project keeps (issue 16), structlog imported the hook's way
    "libraries": "import psutil, filelock, mom_checkpoint.platform.log" + MAKE_LOGGER,
}


COUNT_DATACLASSES = """
import dataclasses, importlib, sys
import mom_checkpoint.commands.checkpoint as cc
for name in cc.AFTER_THE_DUMP:
    importlib.import_module(name)
print(sum(
    1
    for module in list(sys.modules.values())
    if module is not None and module.__name__.startswith("mom_checkpoint")
    for value in vars(module).values()
    if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == module.__name__
))
"""


def hook_dataclasses(python: str) -> int:
    """How many of mom_checkpoint's dataclasses a hook call creates (its imports, the post-dump ones too)."""
    proc = subprocess.run(
        [python, "-I", "-S", "-c", PACKAGED_PREFIX + HOOK_IMPORTS + "\n" + COUNT_DATACLASSES],
        env=MOM_ENV,
        cwd="/",
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout)


def import_costs(python: str, n: int) -> dict[str, Series]:
    """Wall time of interpreters that only import what the hook imports, with and without its libraries."""
    result = {key: Series() for key in IMPORT_CASES}

    def case(key: str) -> Callable[[], None]:
        def run() -> None:
            started = time.perf_counter()
            subprocess.run(
                [python, "-I", "-S", "-c", PACKAGED_PREFIX + IMPORT_CASES[key]],
                env=MOM_ENV,
                cwd="/",
                check=True,
            )
            result[key].add(time.perf_counter() - started)

        return run

    for _ in alternate(n, *[case(key) for key in IMPORT_CASES]):
        pass
    return result


def import_groups(site: Site, job: Job, python: str, n: int) -> list[tuple[str, float]]:
    """-X importtime of the real call: microseconds of import work by the library that caused it."""
    totals: dict[str, list[float]] = {}
    for _ in range(n):
        env = {**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)}
        argv = [python, "-I", "-S", "-X", "importtime", str(packaged("mom-checkpoint"))]
        argv += [str(a) for a in site.torque_args(job)]
        proc = subprocess.run(
            argv, check=False, env=env, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"mom-checkpoint under -X importtime failed: {proc.stderr[-300:]}")
        run: dict[str, float] = {}
        for name, micros in attribute_imports(proc.stderr):
            run[name] = run.get(name, 0.0) + micros
        for name, micros in run.items():
            totals.setdefault(name, []).append(micros)
    result = [
        (name, statistics.median(values + [0.0] * (n - len(values)))) for name, values in totals.items()
    ]
    return sorted(result, key=lambda kv: -kv[1])


def attribute_imports(stderr: str) -> Iterator[tuple[str, float]]:
    """(group, self microseconds) for each import line of -X importtime output.

    A module is printed after the modules it imported, one indentation level deeper than them. The group
    is the outermost third-party library on its import chain (structlog for rich, filelock for asyncio if
    filelock came first), else mom_checkpoint's own modules or the standard library; everything imported
    before `site` finished is interpreter start-up (the editable install's finder apart).
    """
    entries: list[tuple[int, str, float]] = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|( *)(\S+)", line)
        if match:
            entries.append((len(match.group(2)) // 2, match.group(3), float(match.group(1))))
    # parents: walk backwards; a line's children are the lines before it one level deeper, until a line at
    # its own level or shallower
    parent: list[int | None] = [None] * len(entries)
    stack: list[int] = []  # indexes of lines whose children are still being collected, deepest last
    for i in range(len(entries) - 1, -1, -1):
        depth = entries[i][0]
        while stack and entries[stack[-1]][0] >= depth:
            stack.pop()
        parent[i] = stack[-1] if stack else None
        stack.append(i)
    site_done = next((i for i, e in enumerate(entries) if e[0] == 0 and e[1] == "site"), -1)
    stdlib = sys.stdlib_module_names
    for i, (_depth, name, micros) in enumerate(entries):
        chain = []
        j: int | None = i
        while j is not None:
            chain.append(entries[j][1])
            j = parent[j]
        top = chain[-1]
        if any(n.startswith("__editable__") for n in chain):
            yield "the editable install's finder (.pth; dev checkouts only)", micros
        elif i <= site_done or top in {"encodings", "site", "codecs", "io", "abc"}:
            yield "interpreter start-up (encodings, site)", micros
        else:
            third = [n.split(".")[0] for n in chain if third_party(n.split(".")[0], stdlib)]
            if third:
                yield third[-1], micros
            elif name.startswith("mom_checkpoint"):
                yield "mom_checkpoint's own modules", micros
            else:
                yield "standard library (for mom_checkpoint)", micros


def third_party(top: str, stdlib: frozenset[str]) -> bool:
    """A library installed beside mom_checkpoint (not the standard library, not a failed probe like
    platform's `import org`)."""
    if top in stdlib or top == "mom_checkpoint":
        return False
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    return spec is not None and "-packages" in str(spec.origin or spec.submodule_search_locations or "")


# -- row 2: process discovery at scale ----------------------------------------------------------------------
def row_discovery(bench: Bench) -> None:
    from mom_checkpoint.processes import discovery

    site = bench.site("discovery")
    job = site.start_job("2.head")
    seed = site.base / "seed-discovery.sh"
    seed.write_text(SEED_DISCOVERY)
    seed.chmod(0o755)
    exec_pid = job.exec_pid()
    sizes = (200, 2000) if bench.options.quick else (200, 2000, 10000)
    n = bench.reps(7, 3)
    lines = [
        "The job's exec PID found by `mom_checkpoint.processes.discovery.find_job` (in the benchmark's "
        "process: no interpreter start) and by the seed's own lines "
        "(`/bin/ps -ef | /usr/bin/grep $1 | /usr/bin/awk ...` "
        "run by /bin/sh, which starts four programs), with the node filled up by `sleep` processes, each in "
        "its own session. Both found the right PID every time. For comparison, the last two columns give "
        "one psutil children() call for the job's leader (psutil reads the stat file of every process on "
        "the node for it) and one walk through the kernel's own lists of the job's processes "
        "(/proc/PID/task/TID/children).",
        "",
        "| processes on the node | find_job ms | seed's lines ms | one psutil children() scan ms "
        "| walk of /proc/PID/task/*/children ms |",
        "|---|---|---|---|---|",
    ]
    try:
        for size in sizes:
            count = bench.grow_processes(size)
            say(f"[2] discovery among {count} processes: {n} alternations")

            def hook() -> float:
                started = time.perf_counter()
                found = discovery.find_job(job.session_id, job_id=job.job_id, euser=bench.user.name)
                seconds = time.perf_counter() - started
                if found.exec_pid != exec_pid:
                    raise RuntimeError(f"find_job found {found.exec_pid}, not {exec_pid}")
                return seconds

            def theirs() -> float:
                started = time.perf_counter()
                proc = subprocess.run(
                    ["/bin/sh", str(seed), str(job.session_id), job.job_id],
                    env=MOM_ENV,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                seconds = time.perf_counter() - started
                if proc.stdout.split() != [str(exec_pid)]:
                    raise RuntimeError(f"the seed's lines found {proc.stdout.split()}, not {exec_pid}")
                return seconds

            hook()  # warm-up
            theirs()
            a, b = pairs(n, hook, theirs)
            scan, walk = Series(), Series()
            for _ in range(n):
                started = time.perf_counter()
                psutil.Process(job.session_id).children()
                scan.add(time.perf_counter() - started)
                started = time.perf_counter()
                if kernel_children(job.session_id)[:1] != [exec_pid]:
                    raise RuntimeError("/proc/PID/task/*/children did not lead to the exec PID")
                walk.add(time.perf_counter() - started)
            bench.rows.append(
                Row(
                    "2",
                    f"find the exec PID among {count:,} processes (ms): find_job vs ps|grep|awk",
                    a,
                    b,
                    ms,
                )
            )
            lines.append(
                f"| {count:,} | {ms(a.median)} | {ms(b.median)} | {ms(scan.median)} | {ms(walk.median)} |"
            )
            last = (count, a.median, b.median, scan.median, walk.median)
    finally:
        bench.stop_sleepers()
    bench.sections["discovery"] = lines
    count, found, seed_found, scan_s, walk_s = last
    if found < scan_s / 2:
        how = (
            f"it does not grow with the node's processes: it walks the kernel's children lists "
            f"({ms(walk_s)} ms), where one psutil children() call alone would read every process's stat "
            f"({ms(scan_s)} ms)"
        )
    else:
        how = (
            f"one psutil children() call, which reads every process's stat, takes {ms(scan_s)} ms of it; "
            f"the kernel's children lists would give the same tree in {ms(walk_s)} ms"
        )
    bench.notes.append(
        f"Discovery (row 2): among {count:,} processes find_job takes {ms(found)} ms ({ms(seed_found)} ms "
        f"for ps | grep | awk); {how}."
    )


def kernel_children(pid: int) -> list[int]:
    """pid's descendants, children first, from the kernel's per-thread lists (CONFIG_PROC_CHILDREN)."""
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop(0)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as fh:
                    children = [int(word) for word in fh.read().split()]
                found += children
                queue += children
    return found


# -- rows 3 and 4: freeze, wall time, throughput, post-dump work, memory ------------------------------------
@dataclass
class DumpFigures:
    gap: Series = field(default_factory=Series)  # largest gap between the app's ticks (s)
    frozen: Series = field(default_factory=Series)  # CRIU's Frozen time (s)
    wall: Series = field(default_factory=Series)  # the whole call (s)
    dump: Series = field(default_factory=Series)  # criu's own run (s)
    durable: Series = field(default_factory=Series)  # until the image is on disk (s)
    post: Series = field(default_factory=Series)  # after the job runs again (s)
    rate: Series = field(default_factory=Series)  # image MiB / criu's run (MiB/s)
    image: Series = field(default_factory=Series)  # bytes
    outside: Series = field(default_factory=Series)  # the hook's call beyond its manifest's total_s (s)
    followed: Series = field(default_factory=Series)  # % of the image hashed while criu wrote it


def size_label(mib: int) -> str:
    return f"{mib} MiB" if mib < 1024 else f"{mib // 1024} GiB"


def row_freeze(bench: Bench) -> None:
    site = bench.site("freeze")
    site.configure(keep=KEEP, **{"backends.criu.run_as": "job-user"})
    sizes = (256,) if bench.options.quick else (256, 1024)
    lines: list[str] = []
    for mib in sizes:
        lines += freeze_one(bench, site, mib)
    bench.sections["freeze"] = lines


def freeze_one(bench: Bench, site: Site, mib: int) -> list[str]:
    label = size_label(mib)
    job = bench.start_app(site, f"{mib}.freeze", mib)
    ticks = TickLog(job.output)
    hook = packaged("mom-checkpoint")
    raw_root = bench.user_dir(site.base / f"raw-{mib}")
    counter = iter(range(1_000_000))

    raw_kept: list[Path] = []
    warm = int(mib * MIB * 1.25)

    def hook_started() -> bool:
        return any(site.spool.glob(f"*.{job.job_id}/.incoming-*/image/*"))  # CRIU has begun writing

    def via_hook(figures: DumpFigures | None) -> None:
        args = site.torque_args(job)
        bench.fresh_page_cache()
        with bench.warm_memory(warm, hook_started):
            since = ticks.offset()
            start = time.monotonic()
            call = check(as_pbs_mom(hook, args, site.config), "mom-checkpoint")
            end = time.monotonic()
        _, manifest = newest_manifest(site, job.job_id)
        settle()
        if figures is None:
            return
        times = manifest["times"]
        figures.gap.add(ticks.max_gap(since, start, end))
        figures.frozen.add(float(times["frozen_s"]))
        figures.wall.add(call.seconds)
        figures.dump.add(float(times["dump_s"]))
        figures.durable.add(call.seconds)
        figures.post.add(float(times["post_dump_s"]))
        figures.rate.add(manifest["total_bytes"] / MIB / float(times["dump_s"]))
        figures.image.add(float(manifest["total_bytes"]))
        figures.outside.add(call.seconds - float(times["total_s"]))
        [*_, done] = [e for e in site.log_events() if e["event"] == "dump.done"]
        figures.followed.add(100 * float(done["hashed_meanwhile"]) / float(manifest["total_bytes"]))

    def raw_command() -> list[str]:
        _, manifest = newest_manifest(site, job.job_id)
        command = raw_log(list(manifest["backend"]["command"]), "dump.log")
        command[command.index("-D") + 1] = str(bench.user_dir(raw_root / str(next(counter))))
        return command

    def via_raw(figures: DumpFigures | None) -> None:
        command = raw_command()
        image = Path(command[command.index("-D") + 1])
        bench.fresh_page_cache()
        with bench.warm_memory(warm, (image / "dump.log").exists):
            since = ticks.offset()
            start = time.monotonic()
            seconds, proc = run_raw_like_hook(bench, job_user_prefix(bench.user, DUMP_CAPS) + command)
            end = time.monotonic()
        if proc.returncode != 0:
            raise RuntimeError(f"raw criu dump failed (exit {proc.returncode}): {proc.stderr[-300:]}")
        started = time.perf_counter()
        fsync_tree(image)
        synced = time.perf_counter() - started
        size = sum(p.stat().st_size for p in image.iterdir())
        raw_kept.append(image)  # the same retention as the hook's keep=2: the oldest goes once one is added
        while len(raw_kept) > KEEP:
            shutil.rmtree(raw_kept.pop(0))
        settle()
        if figures is None:
            return
        frozen = frozen_us(proc.stdout)
        figures.gap.add(ticks.max_gap(since, start, end))
        if frozen is not None:
            figures.frozen.add(frozen / 1e6)
        figures.wall.add(seconds)
        figures.dump.add(seconds)
        figures.durable.add(seconds + synced)
        figures.post.add(synced)
        figures.rate.add(size / MIB / seconds)
        figures.image.add(float(size))

    time.sleep(1)
    baseline_since = ticks.offset()
    time.sleep(1)
    idle = ticks.stamps(baseline_since)
    idle_gaps = [b - a for a, b in itertools.pairwise(idle)]
    via_hook(None)  # the first dump of a process is slower (CRIU.md point 6): not measured, either way
    via_raw(None)
    ours, theirs = DumpFigures(), DumpFigures()
    n = bench.reps(15, 2)
    say(f"[3/4] freeze and wall time, {label} job: {n} alternations of the hook / raw criu dump")
    for i in alternate(n, lambda: via_hook(ours), lambda: via_raw(theirs)):
        say(
            f"  {i + 1}/{n}: frozen {ms(ours.frozen.values[-1])} / {ms(theirs.frozen.values[-1])} ms, "
            f"criu {sec(ours.dump.values[-1])} / {sec(theirs.dump.values[-1])} s, "
            f"post-dump {sec(ours.post.values[-1])} / {sec(theirs.post.values[-1])} s"
        )
    _, manifest = newest_manifest(site, job.job_id)
    command = " ".join(manifest["backend"]["command"])
    bench.rows += [
        Row("3", f"freeze seen by the app (largest gap between its ticks), {label} (ms): hook vs raw criu",
            ours.gap, theirs.gap, ms, target="ratio <= 1.05", limit=1.05),
        Row("3", f"CRIU's Frozen time (--display-stats), {label} (ms): hook vs raw criu dump",
            ours.frozen, theirs.frozen, ms, target="ratio <= 1.05", limit=1.05),
        Row("4", f"checkpoint wall time, {label} (s): whole hook call vs raw criu dump",
            ours.wall, theirs.dump, sec),
        Row("4", f"until the image is on disk, {label} (s): whole hook call vs criu dump + fsync",
            ours.durable, theirs.durable, sec, target="ratio <= 1.25", limit=1.25),
        Row("4", f"dump throughput, {label} (MiB/s, image / criu's run): in the hook vs raw",
            ours.rate, theirs.rate, num, higher_is_better=True),
        Row("4", f"post-dump work, {label} (s): hash + fsync + manifest + publish vs fsync alone",
            ours.post, theirs.post, sec),
    ]  # fmt: skip
    lines = [
        f"**{label} job** (image {ours.image.median / MIB:.0f} MiB; the ticker writes a line every 2 ms: "
        f"idle, its largest gap in one second was {ms(max(idle_gaps))} ms, median "
        f"{ms(statistics.median(idle_gaps))} "
        f"ms). {n} alternations after one unmeasured dump each. criu's command line, the same for both "
        f"(job-user mode, setpriv prefix): `{command}` (raw: another -D).",
        "",
        "| figure | hook: median (min-max) | raw criu: median (min-max) |",
        "|---|---|---|",
    ]
    for name, a, b, fmt in [
        ("largest gap between ticks (ms)", ours.gap, theirs.gap, ms),
        ("CRIU Frozen time (ms)", ours.frozen, theirs.frozen, ms),
        ("criu's own run (s)", ours.dump, theirs.dump, sec),
        ("whole call (s)", ours.wall, theirs.wall, sec),
        ("after the job runs again (s): hook post_dump_s / raw fsync", ours.post, theirs.post, sec),
        ("until on disk (s)", ours.durable, theirs.durable, sec),
        ("MiB/s through criu", ours.rate, theirs.rate, num),
        ("outside the manifest's total_s (s): start-up, imports, config, pointer, prune, exit", ours.outside,
         Series(), sec),
        ("share of the image hashed while criu wrote it (%)", ours.followed, Series(), num),
    ]:  # fmt: skip
        other = f"{fmt(b.median)} ({fmt(b.lo)}-{fmt(b.hi)})" if b.values else "-"
        lines.append(f"| {name} | {fmt(a.median)} ({fmt(a.lo)}-{fmt(a.hi)}) | {other} |")
    lines += ["", *memory_of_hook(bench, site, job, label, ours.image.median), ""]
    ratio = ours.frozen.median / theirs.frozen.median
    bench.notes.append(
        f"{label} job (rows 3, 4): frozen {ms(ours.frozen.median)} ms in the hook against "
        f"{ms(theirs.frozen.median)} ms for raw criu (ratio {ratio:.2f}); the application saw "
        f"{ms(ours.gap.median)} against {ms(theirs.gap.median)} ms. While the job is frozen the hook only "
        "imports what its work after the dump uses (on one core; section 1 times it), asks the "
        "checkpointer's version (`criu --version`, in a thread) and hashes the pages files as criu "
        f"appends to them (a thread; {ours.followed.median:.0f} % of the image by the dump's end); "
        f"after it runs again it spends {sec(ours.post.median)} s hashing the rest, fsyncing "
        f"(overlapped) and publishing (raw criu's fsync alone: {sec(theirs.post.median)} s), and "
        f"{sec(ours.outside.median)} s starting, importing and pruning."
    )
    job.stop()
    for generation in site.generations(job.job_id):
        shutil.rmtree(generation.parent, ignore_errors=True)
    for image in raw_kept:
        shutil.rmtree(image, ignore_errors=True)
    settle()
    return lines


def memory_of_hook(bench: Bench, site: Site, job: Job, label: str, image: float) -> list[str]:
    """The hook's own peak RSS while it checkpoints this job (a copy of the installed script that reports
    getrusage(RUSAGE_SELF) at the end; RUSAGE_CHILDREN is its largest child, setpriv/criu)."""
    python = str(installed("mom-checkpoint").parent / "python")
    wrapper = site.base / "phases.py"
    wrapper.write_text(PACKAGED_PREFIX + PHASES_WRAPPER)
    out = site.base / "rusage.json"
    own, child = Series(), Series()
    for _ in range(bench.reps(3, 1)):
        call = as_pbs_mom(
            f"{python} -I -S {wrapper}", site.torque_args(job), site.config, {"BENCH_PHASES_OUT": str(out)}
        )
        check(call, "mom-checkpoint (rusage)")
        settle()
        data = json.loads(out.read_text())
        own.add(data["maxrss_self_kib"] * 1024.0)
        child.add(data["maxrss_children_kib"] * 1024.0)
    bench.rows.append(
        Row("7", f"the hook's own peak RSS checkpointing the {label} job (MiB), against the image's size",
            own, Series([image]), lambda v: f"{v / MIB:.0f}", "far below the image", None)
    )  # fmt: skip
    return [
        f"The hook's own peak RSS while checkpointing the {label} job: {own.median / MIB:.1f} MiB "
        f"(image {image / MIB:.0f} MiB; its largest child, criu, peaked at {child.median / MIB:.0f} MiB): "
        "images are hashed in 256 KiB reads, never held in memory."
    ]


# -- row 4: hashing speed -----------------------------------------------------------------------------------
def row_hashing(bench: Bench) -> None:
    folder = bench.base / "hashing"
    big = 256 if bench.options.quick else 1024
    block = os.urandom(MIB)
    layouts = {
        f"CRIU-like: one {big} MiB pages file + 20 small files": [("pages-2.img", big)]
        + [(f"core-{i}.img", 0) for i in range(20)],
        f"four {big // 4} MiB files (a job of several processes)": [
            (f"pages-{i}.img", big // 4) for i in range(4)
        ],
    }
    lines = [
        "In the benchmark's process, files in the page cache (as right after a dump): "
        "`mom_checkpoint.image.hashing.digest_files` (what the hook and mom-restart use, BLAKE3; here "
        "without fsync) against a plain single-threaded loop of `blake3().update()` over 1 MiB reads of "
        "the same "
        "files, and the same loop with `hashlib.sha256()` (the manifests' algorithm before schema 4). "
        "Cores used = CPU time / wall time of the process while it hashes.",
        "",
        "| image | digest_files MiB/s | blake3 loop MiB/s | sha256 loop MiB/s | cores used by digest_files |",
        "|---|---|---|---|---|",
    ]
    n = bench.reps(5, 2)
    for name, files in layouts.items():
        folder.mkdir()
        try:
            lines.append(hash_one(bench, folder, name, files, block=block, n=n))
        finally:
            shutil.rmtree(folder)
    lines += ["", f"This machine has {os.cpu_count()} cores."]
    bench.sections["hashing"] = lines


def hash_one(
    bench: Bench, folder: Path, name: str, files: list[tuple[str, int]], *, block: bytes, n: int
) -> str:
    from mom_checkpoint.image.hashing import digest_files

    rels = []
    for file_name, mib in files:
        with open(folder / file_name, "wb") as fh:
            for _ in range(mib):
                fh.write(block)
            fh.write(block[: 4096 + len(file_name)])
        rels.append(file_name)
    fsync_tree(folder)
    total = sum((folder / rel).stat().st_size for rel in rels)
    expected = {rel: plain_digest(folder / rel) for rel in rels}  # also brings them into the page cache

    def hook() -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        found = digest_files(folder, rels)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        if {f.path: f.digest for f in found} != expected:
            raise RuntimeError("digest_files disagrees with the blake3 loop")
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return wall, cpu / wall

    def plain(algorithm: str) -> float:
        started = time.perf_counter()
        for rel in rels:
            plain_digest(folder / rel, algorithm)
        return time.perf_counter() - started

    a, b, c, cores = Series(), Series(), Series(), Series()
    say(f"[4] hashing, {name}: {n} alternations")

    def ours() -> None:
        wall, used = hook()
        a.add(total / MIB / wall)
        cores.add(used)

    for _ in alternate(
        n, ours, lambda: b.add(total / MIB / plain("blake3")), lambda: c.add(total / MIB / plain("sha256"))
    ):
        pass
    bench.rows += [
        Row("4", f"BLAKE3, {name} (MiB/s): digest_files vs blake3 loop", a, b, num, higher_is_better=True),
        Row("4", f"BLAKE3 against sha256, {name} (MiB/s): digest_files vs sha256 loop", a, c, num,
            higher_is_better=True),
    ]  # fmt: skip
    return f"| {name} | {num(a.median)} | {num(b.median)} | {num(c.median)} | {cores.median:.2f} |"


def plain_digest(path: Path, algorithm: str = "blake3") -> str:
    import blake3

    digest = blake3.blake3() if algorithm == "blake3" else hashlib.new(algorithm)
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(MIB):
            digest.update(chunk)
    return f"{algorithm}:{digest.hexdigest()}"


# -- row 5: restore -----------------------------------------------------------------------------------------
def row_restore(bench: Bench) -> None:
    site = bench.site("restore")
    site.configure(keep=2, **{"backends.criu.run_as": "job-user"})
    sizes = (256,) if bench.options.quick else (256, 1024)
    lines = [
        "The job is checkpointed once by the hook with SIGNAL 15 (CRIU ends it), its session is killed and "
        "its PIDs are waited for until they are free. Then, alternately: `mom-restart --job ID` started the "
        "way pbs_mom starts it (fork, setsid, execv, stdio on /dev/null; it checks every digest, the page "
        "files' while CRIU restores the job stopped), "
        "and the raw `criu restore` command line that mom-restart ran (its log's `restart.running` event), "
        "with the same setpriv prefix, `--inherit-fd` of the output file opened in append mode, in a new "
        "session. Timed from the start until the application's output grows; after each, the restored "
        "processes are killed and their PIDs waited for. Warm: the image in the page cache, as right "
        "after a checkpoint; cold: the page cache dropped before each run of either (the programs read "
        "back), so the image is read from disk.",
        "",
    ]
    for mib in sizes:
        lines += restore_one(bench, site, mib)
    bench.sections["restore"] = lines


def restore_one(bench: Bench, site: Site, mib: int) -> list[str]:
    label = size_label(mib)
    job = bench.start_app(site, f"{mib}.restore", mib)
    check(
        as_pbs_mom(packaged("mom-checkpoint"), site.torque_args(job, signal_number=15), site.config), "qhold"
    )
    leftovers = [p.pid for p in job.processes(zombies=True)]
    job.stop()
    pids_gone(leftovers)
    generation, manifest = newest_manifest(site, job.job_id)
    pids = [int(p["pid"]) for p in manifest["processes"]]
    pids_gone(pids)
    settle()
    counter = iter(range(1_000_000))

    def wait_output(size: int, proc: subprocess.Popen[bytes], what: str) -> None:
        deadline = time.monotonic() + 120
        while job.output.stat().st_size <= size:
            status = proc.poll()
            if (status is not None and status != 0) or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{what}: the application did not run again (exit {status}): {err[-300:]}")
            time.sleep(0.001)

    phases: dict[str, Series] = {}

    warm = int(manifest["total_bytes"] * 1.25)

    launched = time.time()

    def restart_started() -> bool:
        """mom-restart's work folder (<spool>/.restarts/*/restorer/) is there, made for this restart
        (criu logs into a pipe of mom-restart's: its folder is the first trace it leaves)."""
        folders = site.spool.glob(".restarts/*/restorer")
        return any(folder.stat().st_mtime >= launched - 1 for folder in folders)

    def via_mom_restart(cold: bool = False) -> float:
        nonlocal launched
        pids_gone(pids)
        if cold:
            bench.fresh_page_cache()
        with bench.warm_memory(warm, restart_started):
            size = job.output.stat().st_size
            launched = time.time()
            started = time.perf_counter()
            with open(job.output, "ab") as out:  # the seed's --job: the application writes into our stdout
                proc = start_restart(
                    ["--job", job.job_id], site.config, stdout=out, program=packaged("mom-restart")
                )
            wait_output(size, proc, "mom-restart")
            seconds = time.perf_counter() - started
        kill_tree(pids)
        proc.wait(timeout=60)
        pids_gone(pids)
        when: dict[str, float] = {}  # this run's events (restart.running names the restored pid, not ours)
        for event in site.log_events():
            stamp = datetime.fromisoformat(event["timestamp"]).timestamp() if "timestamp" in event else 0.0
            if stamp >= launched and event.get("event", "").startswith("restart."):
                when.setdefault(event["event"], stamp)
        marks = [
            ("start-up, imports, config, finding the generation", launched, when.get("restart.newest")),
            ("checks before CRIU (ownership, manifest, staging, the small files' digests)",
             when.get("restart.newest"), when.get("restart.start")),
            ("criu restore (the page files hashed alongside), until the application's output grows",
             when.get("restart.start"), launched + seconds),
            ("of which the page files' digests, from CRIU's start", when.get("restart.start"),
             when.get("restart.verified")),
        ]  # fmt: skip
        for name, begin, end in marks if not cold else []:
            if begin is not None and end is not None:
                phases.setdefault(name, Series()).add(end - begin)
        return seconds

    def raw_command() -> list[str]:
        """mom-restart's criu command line, reading the generation's image folder itself (mom-restart
        reads root's staged copy through a descriptor), without its --inherit-fd pairs (via_raw hands
        over the same files) and without --leave-stopped."""
        running = [e for e in site.log_events() if e.get("event") == "restart.running"]
        words = raw_log([str(word) for word in running[-1]["command"]], "restore.log")
        words[words.index("-D") + 1] = IMAGE_FD_PATH  # the generation's image folder, handed over
        plain: list[str] = []
        for word in words:
            if plain and plain[-1] == "--inherit-fd":
                plain.pop()
                continue
            if word != "--leave-stopped":  # mom-restart's identity gate; raw criu lets the job run
                plain.append(word)
        return plain

    def handed_over(workdir: Path) -> tuple[list[str], list[int]]:
        """What mom-restart hands the restored job, done by hand: the output file in append mode, and
        each kept file the job held as the user's own copy, under the name the dump gave it."""
        fds = [os.open(job.output, os.O_WRONLY | os.O_APPEND)]
        args = ["--inherit-fd", f"fd[{fds[0]}]:{str(job.output).lstrip('/')}"]
        for kept in manifest.get("kept", []):
            if kept["role"] != "held" or not kept.get("external"):
                continue
            copy = workdir / Path(kept["copy"]).name
            shutil.copyfile(generation / kept["copy"], copy)
            os.chown(copy, bench.user.uid, bench.user.gid)
            copy.chmod(kept["mode"] or 0o400)
            fds.append(os.open(copy, os.O_RDONLY))
            args += ["--inherit-fd", f"fd[{fds[-1]}]:{kept['external']}"]
        return args, fds

    def via_raw(cold: bool = False) -> float:
        pids_gone(pids)
        if cold:
            bench.fresh_page_cache()
        workdir = bench.user_dir(site.base / f"restore-work-{mib}-{next(counter)}")
        command = raw_command()
        command[command.index("--work-dir") + 1] = str(workdir)
        inherit, fds = handed_over(workdir)
        command += inherit
        # the generation's image folder as mom-restart hands its staged copy over: by a descriptor
        # (the spool's folders are root's 0700), at the number the command names
        image_fd = os.open(generation / "image", os.O_RDONLY | os.O_DIRECTORY)
        os.dup2(image_fd, IMAGE_FD)
        os.close(image_fd)
        fds.append(IMAGE_FD)
        try:
            with bench.warm_memory(warm, (workdir / "restore.log").exists):
                size = job.output.stat().st_size
                started = time.perf_counter()
                proc = subprocess.Popen(
                    job_user_prefix(bench.user, RESTORE_CAPS) + command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=child_environ(),
                    cwd="/",
                    umask=0o077,
                    start_new_session=True,
                    pass_fds=fds,
                )
                wait_output(size, proc, "criu restore")
                seconds = time.perf_counter() - started
            _, err = proc.communicate(timeout=120)
        finally:
            for fd in fds:
                os.close(fd)
        if proc.returncode != 0:
            raise RuntimeError(
                f"criu restore failed (exit {proc.returncode}): {err.decode(errors='replace')[-300:]}"
            )
        kill_tree(pids)
        pids_gone(pids)
        shutil.rmtree(workdir, ignore_errors=True)
        return seconds

    via_mom_restart()  # unmeasured: page cache, and the command line for the raw contender
    via_raw()
    n = bench.reps(7, 2)
    say(f"[5] restore, {label} job: {n} alternations of mom-restart / raw criu restore, warm and cold")
    a, b, c, d = Series(), Series(), Series(), Series()
    for i in alternate(
        n,
        lambda: a.add(via_mom_restart()),
        lambda: b.add(via_raw()),
        lambda: c.add(via_mom_restart(cold=True)),
        lambda: d.add(via_raw(cold=True)),
    ):
        say(f"  {i + 1}/{n}: warm {sec(a.values[-1])} / {sec(b.values[-1])} s, cold {sec(c.values[-1])} / "
            f"{sec(d.values[-1])} s")  # fmt: skip
    bench.rows += [
        Row("5", f"restore until the app runs again, {label} (s): mom-restart --job vs raw criu restore",
            a, b, sec, target="ratio <= 1.10", limit=1.10),
        Row("5", f"the same from a dropped page cache (the image read from disk), {label} (s)",
            c, d, sec, target="ratio <= 1.10", limit=1.10),
    ]  # fmt: skip
    shutil.rmtree(generation.parent, ignore_errors=True)
    split = "; ".join(f"{name} {sec(series.median)} s" for name, series in phases.items())
    say(f"  mom-restart's time (warm): {split}")
    bench.notes.append(
        f"Restore, {label} (row 5): mom-restart {sec(a.median)} s against raw criu's {sec(b.median)} s: "
        f"{split}."
    )
    return [
        f"- {label} (image {manifest['total_bytes'] / MIB:.0f} MiB): mom-restart {sec(a.median)} s, raw criu "
        f"restore {sec(b.median)} s. mom-restart's time, from its log's timestamps (medians): {split}. "
        f"criu's command: `{' '.join(raw_command())}`."
    ]


# -- row 6: spool usage over time ---------------------------------------------------------------------------
class Sampler:
    """Samples bytes on disk below some folders every few milliseconds, in a thread."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), {k: disk_bytes(p) for k, p in self.paths.items()}))
            time.sleep(0.005)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, key: str, start: float, end: float) -> int:
        return max((s[key] for t, s in self.samples if start <= t <= end), default=0)


def row_spool(bench: Bench) -> None:
    site = bench.site("spool")
    keep = 2
    site.configure(keep=keep, **{"backends.criu.run_as": "job-user"})
    mib = 64 if bench.options.quick else 256
    periods = 6 if bench.options.quick else 20
    job = bench.start_app(site, "6.spool", mib)
    hook = packaged("mom-checkpoint")
    seed_dir = bench.user_dir(site.base / "seed-scheme" / f"{job.exec_pid()}.6.spool")
    ours_peak, theirs_peak, images = Series(), Series(), Series()
    say(f"[6] spool usage: {periods} periodic checkpoints of a {mib} MiB job, keep={keep}, alternating")
    with Sampler({"hook": site.spool, "seed": seed_dir.parent}) as sampler:
        for _ in range(periods):
            start = time.monotonic()
            check(as_pbs_mom(hook, site.torque_args(job), site.config), "mom-checkpoint")
            end = time.monotonic()
            ours_peak.add(float(sampler.peak("hook", start, end)))
            newest, manifest = newest_manifest(site, job.job_id)
            images.add(float(disk_bytes(newest)))
            settle()
            command = raw_log(list(manifest["backend"]["command"]), "dump.log")
            command[command.index("-D") + 1] = str(seed_dir)
            start = time.monotonic()
            _, proc = run_raw(job_user_prefix(bench.user, DUMP_CAPS) + command)
            end = time.monotonic()
            if proc.returncode != 0:
                raise RuntimeError(f"raw criu dump failed (exit {proc.returncode}): {proc.stderr[-300:]}")
            theirs_peak.add(float(sampler.peak("seed", start, end)))
            settle()
            time.sleep(0.05)
    image = images.median
    ours_final, theirs_final = disk_bytes(site.spool), disk_bytes(seed_dir.parent)
    hook_all = max(s["hook"] for _, s in sampler.samples)
    seed_all = max(s["seed"] for _, s in sampler.samples)

    def in_images(series: Series) -> Series:
        return Series([v / image for v in series.values])

    met = hook_all / image <= keep + 1 + 0.02  # 2 %: the manifest and logs beside the images
    bench.rows += [
        Row(
            "6",
            f"peak bytes on disk during a checkpoint, {periods} checkpoints keep={keep} (images): hook vs "
            "the seed's one folder (raw criu, written over)",
            in_images(ours_peak),
            in_images(theirs_peak),
            num,
            f"hook never above {keep + 1}: {'met' if met else 'NOT met'}",
        ),
        Row(
            "6",
            "bytes on disk after the last checkpoint (images)",
            Series([ours_final / image]),
            Series([theirs_final / image]),
            num,
        ),
    ]
    job.stop()
    bench.sections["spool"] = [
        f"A {mib} MiB job checkpointed {periods} times by the hook (keep={keep}), alternating with a raw "
        "criu dump of the same job into one fixed folder (the seed's scheme: "
        "`/var/spool/checkpoint/$exec_pid.job_id`, written over every time). Bytes allocated on disk "
        "(like du) sampled every 5 ms in a thread "
        f"({len(sampler.samples)} samples); one image = {image / MIB:.0f} MiB on disk.",
        "",
        f"- hook: highest sample {hook_all / image:.2f} images (the kept {keep} plus the one being written, "
        f"pruned only once it is complete); after the last checkpoint {ours_final / image:.2f} images.",
        f"- seed's scheme: highest sample {seed_all / image:.2f} images, after the last "
        f"{theirs_final / image:.2f}: "
        "never more than one, but while criu writes over it there is no complete checkpoint at all, and a "
        "failed dump leaves none.",
    ]


# -- the document -------------------------------------------------------------------------------------------
def page_cache_speed(bench: Bench) -> tuple[float, float]:
    """MiB/s of buffered writes into page cache freed a moment ago, and into memory not used lately.

    256 MiB files are written and kept (each fsync'd after its timed write, so that no dirty pages pile
    up) until two in a row are written at under 40 % of the best speed, or 2 GiB are written: by then
    the writes go to memory not used lately. Then each file is deleted and at once written again."""
    folder = bench.base / "page-cache"
    folder.mkdir()

    def write(path: Path) -> float:
        with open(path, "wb") as fh:
            started = time.perf_counter()
            for _ in range(256):
                fh.write(bench.block)
            seconds = time.perf_counter() - started
            fh.flush()
            os.fsync(fh.fileno())
        return 256 / seconds

    try:
        kept: list[float] = []
        while len(kept) < 8 and not (len(kept) >= 3 and max(kept[-2:]) < 0.4 * max(kept)):
            kept.append(write(folder / f"kept-{len(kept)}"))
        reused = []
        for path in sorted(folder.iterdir()):
            path.unlink()
            reused.append(write(path))
            path.unlink()
    finally:
        shutil.rmtree(folder)
    return statistics.median(reused), statistics.median(kept[-2:])


def machine_facts(cache: tuple[float, float] | None) -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    disk = "unknown"
    tmp = Path(tempfile.gettempdir()).resolve()
    with contextlib.suppress(OSError):
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, kind, opts = line.split()[:4]
            if str(tmp).startswith(mount) and len(mount) >= len(best):
                best, disk = mount, f"{kind} on {device} ({opts.split(',')[0]}), mounted at {mount}"
    return [
        f"- kernel {platform.release()}, {os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB memory",
        f"- work folder {tmp}: {disk}",
        f"- CRIU {criu_version()}, Python {platform.python_version()}, psutil {psutil.__version__}",
        f"- commit {commit()}",
        *(
            [
                f"- buffered writes (256 MiB, before any fsync) into page cache freed a moment ago: "
                f"{cache[0]:.0f} MiB/s; into memory not used lately: {cache[1]:.0f} MiB/s (where the second "
                "is far slower, the VM's host backs its memory lazily). A dump writes its image into memory "
                "too, so how fast it ran depended on how recently and how much memory had been freed before "
                "it, which the order of the runs decided. So before every dump, of either contender, the "
                "benchmark syncs and drops the page cache, reads back the programs both run, writes and "
                "fsyncs a scratch file 1.25 times the image's size and deletes it the moment criu has "
                "started (its log file appears); and raw criu is started by a Python process that first "
                "imports what the hook imports, so that criu starts as long after its launch as the hook's "
                "does (criu's own run is what is timed). Before every restore the scratch file is used the "
                "same way."
            ]
            if cache
            else []
        ),
    ]


def criu_version() -> str:
    for binary in ("/usr/local/sbin/criu", "/usr/sbin/criu"):
        if os.access(binary, os.X_OK):
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
            match = re.search(r"Version:\s*(\S+)", out)
            return match.group(1) if match else "unknown"
    return "none"


def commit() -> str:
    git = shutil.which("git") or "git"
    proc = subprocess.run(
        [git, "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        [git, "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return (proc.stdout.strip() or "unknown") + (" with uncommitted changes" if dirty.stdout.strip() else "")


def others_running() -> list[str]:
    """Other test runs on the machine (pgrep -f "pytest|reliability.py"), this process excluded."""
    proc = subprocess.run(
        ["/usr/bin/pgrep", "-af", "pytest|reliability.py"], capture_output=True, text=True, check=False
    )
    return [line for line in proc.stdout.splitlines() if line.split()[0] != str(os.getpid())]


def table(rows: list[Row]) -> list[str]:
    return [*TABLE_HEAD, *[row.line() for row in rows]]


def document(bench: Bench, started: datetime, seconds: float, quiet: tuple[list[str], list[str]]) -> str:
    before, during = quiet
    noise = (
        'No other test run (`pgrep -f "pytest|reliability.py"`) was seen at the start or during the run.'
        if not before and not during
        else "Other test runs were running on the machine during this run, so the figures are noisier than "
        f"they would be on a quiet node: {'; '.join(sorted(set(before + during)))[:400]}."
    )
    load = os.getloadavg()
    sections = bench.sections
    lines = [
        "# Performance: the figures",
        "",
        f"Generated by `scripts/benchmark.py` on {started.strftime('%Y-%m-%d %H:%M UTC')} in "
        f"{seconds / 60:.0f} minutes. Not edited by hand: run `.venv/bin/python scripts/benchmark.py` "
        "again to refresh it.",
        "",
        *machine_facts(bench.cache_speed),
        f"- {noise} Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.",
        "",
        "Every row runs both contenders alternately on the same job within this one run, the order "
        "reversed every other round (A B, B A, A B, ...: here the first of a pair came out slower, "
        "whichever it was), and gives the median and the range (min-max) of each, and the ratio of the "
        "medians (mom-checkpoint / alternative; for MiB/s higher is better, for everything else lower). "
        "Jobs are started the way pbs_mom starts them (`mom-checkpoint-run`, as the user `momtest`); the "
        "hook and the seed's script are called the way pbs_mom calls them (`/bin/sh -c \"... 2>&1 "
        '1>/dev/null"`, PATH=/bin:/usr/bin, cwd /). CRIU runs in job-user mode (root here lacks '
        "CAP_SYS_RESOURCE, docs/CRIU.md): raw criu gets the very command line the hook recorded in its "
        "manifest, with the same setpriv prefix, environment, umask and cwd. Before every dump the "
        "previous image's pages are on disk (`sync`). Where a row has a target, a 90 % bootstrap interval "
        "of its ratio (whole rounds resampled) shows how far the ratio moves by chance on this machine.",
        "",
        *table(bench.rows),
        "",
        "## Where the time goes, in short",
        "",
        *[f"- {note}" for note in bench.notes],
        "",
    ]
    if bench.failures:
        lines += ["## Rows that failed", "", *[f"- {f}" for f in bench.failures], ""]
    if "overhead" in sections:
        lines += [
            "## 1. Hook overhead, and where its time goes",
            "",
            "The seed's script (section 5 of its guide) is run exactly as published, including the literal "
            f"`job_id` in its folder name, with two paths changed: `{SEED_CHKPNT}` is the same stand-in "
            f"chkpnt the hook uses (tests/standins/chkpnt, 1 KiB of padding), and `{SEED_SPOOL}` a folder "
            "of the benchmark's. The hook runs with the psnc backend on that stand-in, the 8 TORQUE "
            "arguments and keep=2, so each call also publishes, points and prunes.",
            "",
            *sections["overhead"],
            "",
        ]
    if "discovery" in sections:
        lines += ["## 2. Process discovery at scale", "", *sections["discovery"], ""]
    if "freeze" in sections:
        lines += [
            "## 3 and 4. Freeze, wall time, throughput, post-dump work; the hook's memory",
            "",
            "The job runs tests/apps/ticker.py, which writes CLOCK_MONOTONIC every 2 ms; the largest gap "
            "between two of its lines around a dump is the freeze as the application saw it. CRIU's own "
            "`Frozen time` comes from `--display-stats` (the hook's manifest, raw criu's stdout). The hook's "
            "figures come from its manifest (`times.dump_s`, `times.post_dump_s`) and the outside timer "
            "(whole call); raw criu's image is then fsync'd file by file, timed, for the 'on disk' figure.",
            "",
            *sections["freeze"],
        ]
    if "hashing" in sections:
        lines += ["## 4. Hashing speed", "", *sections["hashing"], ""]
    if "restore" in sections:
        lines += ["## 5. Restore time", "", *sections["restore"], ""]
    if "spool" in sections:
        lines += ["## 6. Spool usage over time", "", *sections["spool"], ""]
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------------------------
def wait_quiet(limit_s: float) -> list[str]:
    deadline = time.monotonic() + limit_s
    while (busy := others_running()) and time.monotonic() < deadline:
        say(f"waiting for other test runs to end ({len(busy)} processes): {busy[0][:100]}")
        time.sleep(30)
    return busy


# -- row 9: the vault -------------------------------------------------------------------------------------
def row_vault(bench: Bench) -> None:
    """The copy to the vault must cost the checkpoint nothing: the freeze the application sees and the
    hook's whole call with a vault against without one (alternating, the copy of the previous call
    finished before the next starts), and the copier's throughput against cp + sync of the same image
    to the same vault (a loop-mounted ext4 on this machine's disk: a file system of its own), cp at
    the copier's own priority (nice 10, idle I/O class), while the job runs on."""
    site = bench.site("vault")
    vault = site.base / "vault"
    vault.mkdir()
    backing = site.base / "vault.img"
    mib = 256
    subprocess.run(["/usr/bin/truncate", "-s", f"{mib * 8}M", str(backing)], check=True)
    subprocess.run(["/sbin/mkfs.ext4", "-q", "-F", str(backing)], check=True, capture_output=True)
    subprocess.run(["/bin/mount", "-o", "loop", str(backing), str(vault)], check=True)
    try:
        vault.chmod(0o700)
        _vault_rows(bench, site, vault, mib)
    finally:
        subprocess.run(["/bin/umount", "-l", str(vault)], check=False)


def _vault_rows(bench: Bench, site: Site, vault: Path, mib: int) -> None:
    label = size_label(mib)
    job = bench.start_app(site, f"{mib}.vault", mib)
    ticks = TickLog(job.output)
    hook = packaged("mom-checkpoint")
    keys: dict[str, Any] = {"keep": KEEP, "backends.criu.run_as": "job-user"}
    gap_on, gap_off, call_on, call_off = Series(), Series(), Series(), Series()
    copier, synced, cp_sync = Series(), Series(), Series()

    warm = int(mib * MIB * 1.25)

    def hook_started() -> bool:
        return any(site.spool.glob(f"*.{job.job_id}/.incoming-*/image/*"))  # CRIU has begun writing

    def checkpoint(with_vault: bool, gap: Series | None, wall: Series | None) -> None:
        site.configure(**keys, **({"vault_dir": str(vault)} if with_vault else {}))
        copies = len([e for e in site.log_events() if e.get("event") == "vault.copied"])
        bench.fresh_page_cache()  # as for the freeze rows: the same start for every dump
        with bench.warm_memory(warm, hook_started):
            since = ticks.offset()
            start = time.monotonic()
            call = check(as_pbs_mom(hook, site.torque_args(job), site.config), "mom-checkpoint")
            end = time.monotonic()
        if with_vault:  # the copy runs after the call: wait for it, untimed, before anything else runs
            deadline = time.monotonic() + 600
            while len(done := [e for e in site.log_events() if e.get("event") == "vault.copied"]) == copies:
                if time.monotonic() > deadline:
                    raise RuntimeError("the copy to the vault did not finish in 10 minutes")
                time.sleep(0.1)
            copier.add(float(done[-1]["mib_s"]))
        settle()
        if gap is not None and wall is not None:
            gap.add(ticks.max_gap(since, start, end))
            wall.add(call.seconds)

    def vault_sync() -> None:
        """vault-sync of the newest generation as the timer runs it, from the same start as cp: its
        own figure for the copy (links, read, hash, write, fsync, publish; not Python's start-up, the
        locks, or the pruning of older copies after it, as cp's target is removed untimed)."""
        generation, _ = newest_manifest(site, job.job_id)
        for copy in vault.glob(f"*.{job.job_id}/{generation.name}"):
            shutil.rmtree(copy)  # copied by the hook's copier already: copied again here
        site.configure(**keys, vault_dir=str(vault))
        copies = len([e for e in site.log_events() if e.get("event") == "vault.copied"])
        bench.fresh_page_cache()
        done = subprocess.run(
            [str(hook), "vault-sync", "--job", job.job_id],
            env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)}, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        events = [e for e in site.log_events() if e.get("event") == "vault.copied"]
        if done.returncode != 0 or len(events) == copies:
            raise RuntimeError(f"vault-sync did not copy: {done.stdout}{done.stderr}")
        synced.add(float(events[-1]["mib_s"]))  # the copy: not the locks, not the pruning after it
        settle()

    def cp_and_sync() -> None:
        generation, _ = newest_manifest(site, job.job_id)
        target = vault / f"cp-{time.monotonic_ns()}"
        size = sum(p.stat().st_size for p in (generation / "image").iterdir())
        bench.fresh_page_cache()  # the copier too starts with the image out of the page cache
        start = time.monotonic()
        low = ["/usr/bin/nice", "-n", "10", "/usr/bin/ionice", "-c", "3"]  # as low as the copier runs
        subprocess.run([*low, "/bin/cp", "-r", str(generation / "image"), str(target)], check=True)
        subprocess.run([*low, "/bin/sync", "-f", str(target)], check=True)
        cp_sync.add(size / MIB / (time.monotonic() - start))
        shutil.rmtree(target)
        settle()

    checkpoint(True, None, None)  # the first dump of a process is slower: not measured
    n = bench.reps(8, 2)
    say(f"[9] the vault, {label} job: {n} alternations of the hook with / without a vault, and cp + sync")
    with_vault = lambda: checkpoint(True, gap_on, call_on)  # noqa: E731
    without = lambda: checkpoint(False, gap_off, call_off)  # noqa: E731
    for i in alternate(n, with_vault, without, vault_sync, cp_and_sync):
        say(f"  {i + 1}/{n}: call {sec(call_on.values[-1])} / {sec(call_off.values[-1])} s, copy after "
            f"the checkpoint {num(copier.values[-1])} MiB/s, vault-sync {num(synced.values[-1])} MiB/s, "
            f"cp + sync {num(cp_sync.values[-1])} MiB/s")  # fmt: skip
    bench.rows += [
        Row("9", f"freeze seen by the app, {label} (ms): with a vault vs without", gap_on, gap_off, ms,
            target="ratio <= 1.02", limit=1.02),
        Row("9", f"the hook's whole call, {label} (s): with a vault vs without (the copy is not in it)",
            call_on, call_off, sec, target="ratio <= 1.02", limit=1.02),
        Row("9", f"copy into the vault (ext4 on a loop device), {label} (MiB/s): vault-sync vs cp + sync, "
            "both at nice 10 in the idle I/O class, from a dropped page cache",
            synced, cp_sync, num, target="ratio >= 0.9", limit=0.9, higher_is_better=True),
        Row("9", "of which the hook's own copier, right after each checkpoint (MiB/s; the job runs, the "
            "pruned generation's blocks are being freed)", Series(copier.values[1:]), None, num),
    ]  # fmt: skip
    job.stop()
    for generation in site.generations(job.job_id):
        shutil.rmtree(generation.parent, ignore_errors=True)


RUNNERS: dict[str, Callable[[Bench], None]] = {
    "overhead": row_overhead,
    "discovery": row_discovery,
    "freeze": row_freeze,
    "hashing": row_hashing,
    "restore": row_restore,
    "spool": row_spool,
    "vault": row_vault,
}


def parse_options(argv: Sequence[str] | None = None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions, smaller jobs (for development)"
    )
    parser.add_argument("--reps", type=int, help="repetitions of each contender in every row")
    parser.add_argument("--only", action="append", default=[], help=f"rows to run: {', '.join(ROWS)}")
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the document (default: docs/PERFORMANCE.md for a full run, none with --quick "
        "or --only)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to this long for other test runs (pytest, reliability.py) to end",
    )
    args = parser.parse_args(argv)
    only: set[str] = set()
    for item in args.only:
        for word in item.split(","):
            name = ALIASES.get(word.strip(), word.strip())
            if name not in ROWS:
                parser.error(f"unknown row {name!r}: choose from {', '.join(ROWS)}")
            only.add(name)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    return Options(args.quick, args.reps, only), args


def main(argv: Sequence[str] | None = None) -> int:
    options, args = parse_options(argv)
    problem = _criu_problem()
    if problem is not None:
        print(f"benchmark: cannot run: {problem}", file=sys.stderr)
        return 69
    try:
        user = User.named(TEST_USER)
    except KeyError:
        print(f"benchmark: the user {TEST_USER} is missing (make test-user)", file=sys.stderr)
        return 69
    output = args.output
    if output is None and not options.quick and not options.only:
        output = ROOT / "docs" / "PERFORMANCE.md"
    busy_before = wait_quiet(args.wait_quiet) if args.wait_quiet else others_running()
    busy_during: list[str] = []

    def interrupted(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    started_at, started = datetime.now(UTC), time.monotonic()
    bench = Bench(options, user)
    try:
        bench.cache_speed = page_cache_speed(bench)
        for name in ROWS:
            if options.only and name not in options.only:
                continue
            try:
                settle()
                wait_for_idle_cpu()  # e.g. the kernel still discarding the blocks of the last row's images
                RUNNERS[name](bench)
            except Exception as exc:
                bench.failures.append(f"{name}: {type(exc).__name__}: {exc}")
                say(f"row {name} FAILED: {type(exc).__name__}: {exc}")
            busy_during += others_running()
    finally:
        bench.close()
    print("\n".join(table(bench.rows)))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(document(bench, started_at, time.monotonic() - started, (busy_before, busy_during)))
        say(f"wrote {output}")
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())

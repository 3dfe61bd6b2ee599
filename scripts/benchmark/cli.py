"""The command line: options, the families of rows in their order, the run, the table and the document."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from tests.helpers import TEST_USER, User, criu_problem

from . import ROOT, discovery, freeze, hashing, incremental, overhead, restore, spool, vault
from . import __doc__ as USAGE
from .core import Bench, Family, Options, say, settle, table, wait_for_idle_cpu
from .document import document, page_cache_speed

FAMILIES: tuple[Family, ...] = (
    overhead.FAMILY,
    discovery.FAMILY,
    freeze.FAMILY,
    hashing.FAMILY,
    restore.FAMILY,
    spool.FAMILY,
    vault.FAMILY,
    incremental.FAMILY,
)
ROWS = tuple(family.name for family in FAMILIES)
ALIASES = {"wall": "freeze", "throughput": "freeze", "memory": "freeze"}


def others_running() -> list[str]:
    """Other test runs on the machine (pgrep -f "pytest|reliability.py"), this process excluded."""
    proc = subprocess.run(
        ["/usr/bin/pgrep", "-af", "pytest|reliability.py"], capture_output=True, text=True, check=False
    )
    return [line for line in proc.stdout.splitlines() if line.split()[0] != str(os.getpid())]


def wait_quiet(limit_s: float) -> list[str]:
    deadline = time.monotonic() + limit_s
    while (busy := others_running()) and time.monotonic() < deadline:
        say(f"waiting for other test runs to end ({len(busy)} processes): {busy[0][:100]}")
        time.sleep(30)
    return busy


def parse_options(argv: Sequence[str] | None = None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="scripts/benchmark", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
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
    problem = criu_problem()
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
        for family in FAMILIES:
            if options.only and family.name not in options.only:
                continue
            try:
                settle()
                wait_for_idle_cpu()  # e.g. the kernel still discarding the blocks of the last row's images
                family.run(bench)
            except Exception as exc:
                bench.failures.append(f"{family.name}: {type(exc).__name__}: {exc}")
                say(f"row {family.name} FAILED: {type(exc).__name__}: {exc}")
            busy_during += others_running()
    finally:
        bench.close()
    print("\n".join(table(bench.rows)))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        text = document(bench, FAMILIES, started_at, time.monotonic() - started, (busy_before, busy_during))
        output.write_text(text)
        say(f"wrote {output}")
    return 1 if bench.failures else 0

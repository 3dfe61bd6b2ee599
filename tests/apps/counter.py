#!/usr/bin/python3
"""A batch application for the tests: counts, one number a line, flushing each one.

Environment: COUNTER_INTERVAL seconds between numbers (0.05), COUNTER_LIMIT stop after that many (0 =
never), COUNTER_EXIT exit status at the end, COUNTER_MIB MiB of resident memory to hold, COUNTER_HOLD
a file to keep open for reading (as an application keeps its input), COUNTER_IGNORE_TERM=1 to ignore
SIGTERM (as some applications do), COUNTER_REWRITE a percentage: the ballast is then random bytes,
and each SIGUSR1 rewrites that share of it with new random bytes in COUNTER_REWRITE_RUNS runs (8)
spread over it, then prints "rewrote" (a job that changes a known fraction of its memory between two
checkpoints).
"""

import os
import signal
import sys
import time

interval = float(os.environ.get("COUNTER_INTERVAL", "0.05"))
limit = int(os.environ.get("COUNTER_LIMIT", "0"))
status = int(os.environ.get("COUNTER_EXIT", "0"))
mib = int(os.environ.get("COUNTER_MIB", "0"))
rewrite = float(os.environ.get("COUNTER_REWRITE", "0"))
runs = int(os.environ.get("COUNTER_REWRITE_RUNS", "8"))
ballast = bytearray(os.urandom(mib << 20) if rewrite else os.urandom(1024) * (mib * 1024))  # resident
held = open(os.environ["COUNTER_HOLD"], "rb") if os.environ.get("COUNTER_HOLD") else None  # noqa: SIM115

if os.environ.get("COUNTER_IGNORE_TERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
asked: list[int] = []
signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))


def rewritten() -> None:
    """``rewrite`` percent of the ballast, as ``runs`` runs spread over it, each new random bytes."""
    run = int(len(ballast) * rewrite / 100 / runs) // 4096 * 4096
    for i in range(runs):
        start = i * len(ballast) // runs
        ballast[start : start + run] = os.urandom(run)
    print("rewrote", flush=True)


count = 0
while not limit or count < limit:
    if asked:
        asked.clear()
        rewritten()
    count += 1
    print(count, flush=True)
    time.sleep(interval)
sys.exit(status)

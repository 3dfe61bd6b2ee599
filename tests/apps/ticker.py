#!/usr/bin/python3
"""A batch application for the benchmarks: writes a timestamp every few milliseconds, flushing each one.

Each line is CLOCK_MONOTONIC in whole microseconds (the same clock for every process on the node), so a
reader can find the largest gap between two lines: the time the application was stopped, as it saw it
(a checkpointer's freeze). The lines are plain integers, like counter.py's, so tests.helpers.Job.count()
and wait_count() work on it too.

Environment: TICKER_INTERVAL seconds between lines (0.002), TICKER_MIB MiB of resident memory to hold.
"""

import os
import time

interval = float(os.environ.get("TICKER_INTERVAL", "0.002"))
mib = int(os.environ.get("TICKER_MIB", "0"))
ballast = bytearray(os.urandom(1024)) * (mib * 1024)  # resident, not all zero pages

while True:
    print(time.monotonic_ns() // 1000, flush=True)
    time.sleep(interval)

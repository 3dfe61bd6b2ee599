#!/usr/bin/python3
"""A batch application for the tests: counts, one number a line, flushing each one.

Environment: COUNTER_INTERVAL seconds between numbers (0.05), COUNTER_LIMIT stop after that many (0 =
never), COUNTER_EXIT exit status at the end, COUNTER_MIB MiB of resident memory to hold, COUNTER_HOLD
a file to keep open for reading (as an application keeps its input), COUNTER_IGNORE_TERM=1 to ignore
SIGTERM (as some applications do).
"""

import os
import signal
import sys
import time

interval = float(os.environ.get("COUNTER_INTERVAL", "0.05"))
limit = int(os.environ.get("COUNTER_LIMIT", "0"))
status = int(os.environ.get("COUNTER_EXIT", "0"))
mib = int(os.environ.get("COUNTER_MIB", "0"))
ballast = bytearray(os.urandom(1024)) * (mib * 1024)  # resident, not all zero pages
held = open(os.environ["COUNTER_HOLD"], "rb") if os.environ.get("COUNTER_HOLD") else None  # noqa: SIM115

if os.environ.get("COUNTER_IGNORE_TERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

count = 0
while not limit or count < limit:
    count += 1
    print(count, flush=True)
    time.sleep(interval)
sys.exit(status)

#!/usr/bin/python3
"""A batch application for the benchmarks: ticker.py's timestamps, with memory that does not shrink in the
vault, part of which it rewrites on demand.

Like ticker.py it writes CLOCK_MONOTONIC in whole microseconds every few milliseconds, one plain integer
a line, flushing each (so tests.helpers.Job.count() and wait_count() work on it, and a reader finds the
freeze as the largest gap). It holds DIRTIER_MIB MiB of memory, resident before its first line:

- DIRTIER_KIND=random (the default): random bytes, no two pages alike, not compressible (ticker.py's
  memory is one KiB repeated: a vault that cuts it into chunks stores one chunk for all of it);
- DIRTIER_KIND=floats: float64 arrays as a simulation holds them, half a random walk and half a smooth
  field with noise: numpy's when the interpreter finds numpy (e.g. PYTHONPATH naming a venv's
  site-packages), else array('d') (slower to fill). Its first line after the ticks' says which:
  "floats numpy" or "floats array".

On SIGUSR1 it rewrites DIRTIER_FRACTION (0.05) of its memory with new random bytes, in DIRTIER_RUNS (8)
contiguous runs of whole pages, one in each of that many equal stretches of the memory at a random page
of it, then prints "dirtied N BYTES" (N: the how-manieth time, BYTES: what it rewrote): the line tells a
benchmark that the pages are written. DIRTIER_INTERVAL seconds between the timestamps (0.002).
"""

import math
import os
import random
import signal
import time

PAGE = 4096
MIB = 1 << 20

interval = float(os.environ.get("DIRTIER_INTERVAL", "0.002"))
mib = int(os.environ.get("DIRTIER_MIB", "0"))
kind = os.environ.get("DIRTIER_KIND", "random")
fraction = float(os.environ.get("DIRTIER_FRACTION", "0.05"))
runs = int(os.environ.get("DIRTIER_RUNS", "8"))


def random_bytes(size: int) -> bytearray:
    memory = bytearray(size)
    for offset in range(0, size, MIB):
        end = min(size, offset + MIB)
        memory[offset:end] = os.urandom(end - offset)
    return memory


def floats(size: int) -> tuple[object, memoryview, str]:
    """float64 arrays of ``size`` bytes in all, and a view of their bytes."""
    n = size // 8
    half = n // 2
    try:
        import numpy  # type: ignore[import-not-found,unused-ignore]  # optional: a throwaway venv
    except ImportError:
        from array import array

        step = 2 * math.pi * 100 / max(1, n - half)
        walk, level = array("d", bytes(8 * half)), 0.0
        for i in range(half):
            level += random.gauss(0.0, 1.0)
            walk[i] = level
        field = array("d", (math.sin(i * step) + random.gauss(0.0, 1e-3) for i in range(n - half)))
        walk.extend(field)
        del field
        return walk, memoryview(walk).cast("B"), "array"
    rng = numpy.random.default_rng()
    values = numpy.empty(n, dtype=numpy.float64)
    values[:half] = numpy.cumsum(rng.standard_normal(half))
    values[half:] = numpy.sin(numpy.linspace(0.0, 200 * math.pi, n - half))
    values[half:] += 1e-3 * rng.standard_normal(n - half)
    return values, memoryview(values).cast("B"), "numpy"


if kind == "floats":
    held, memory, made_by = floats(mib * MIB)
else:
    held = random_bytes(mib * MIB)
    memory, made_by = memoryview(held), ""

asked: list[int] = []
signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))


def dirty(times: int) -> None:
    """``fraction`` of the memory rewritten in ``runs`` contiguous runs of whole pages."""
    pages = len(memory) // PAGE
    run = max(1, round(pages * fraction / runs)) if fraction > 0 else 0
    stretch = pages // runs
    written = 0
    for i in range(runs if run else 0):
        first = i * stretch + random.randrange(max(1, stretch - run + 1))
        start, end = first * PAGE, min(len(memory), (first + run) * PAGE)
        memory[start:end] = os.urandom(end - start)
        written += end - start
    print("dirtied", times, written, flush=True)


if made_by:
    print("floats", made_by, flush=True)
dirtied = 0
while True:
    if asked:
        asked.clear()
        dirtied += 1
        dirty(dirtied)
    print(time.monotonic_ns() // 1000, flush=True)
    time.sleep(interval)

"""Row 2: finding the job's exec PID among many processes: find_job against the seed's ps | grep | awk."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

import psutil

from tests.helpers import MOM_ENV

from .core import SEED_DISCOVERY, Bench, Family, Row, Series, ms, pairs, say


def run(bench: Bench) -> None:
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


FAMILY = Family(name="discovery", run=run, title="2. Process discovery at scale")

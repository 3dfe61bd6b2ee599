"""The job's process tree from the kernel's children lists matches psutil's full scan."""

from __future__ import annotations

import subprocess
import time

import psutil

from mom_checkpoint.processes.discovery import children_of, descendants


def test_the_kernels_lists_give_psutils_tree() -> None:
    # a shell with two children (a sleep, a subshell), the subshell with a child of its own
    shell = subprocess.Popen(["/bin/bash", "-c", "sleep 60 & (sleep 60 & wait) & wait"])
    try:
        top = psutil.Process(shell.pid)
        deadline = time.monotonic() + 10
        while len(top.children(recursive=True)) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert sorted(c.pid for c in children_of(top)) == sorted(c.pid for c in top.children())
        tree = descendants(top)
        assert sorted(c.pid for c in tree) == sorted(c.pid for c in top.children(recursive=True))
        seen = {top.pid}
        for proc in tree:  # parents before their children
            assert proc.ppid() in seen
            seen.add(proc.pid)
    finally:
        for proc in psutil.Process(shell.pid).children(recursive=True):
            proc.kill()
        shell.kill()
        shell.wait()

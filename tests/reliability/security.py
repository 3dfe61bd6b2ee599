"""Security scenarios: what an ordinary user of a node tries against root's hook and mom-restart.

Each is an attack from the 2026-11 attack review (issue 11) or one found since, played as the job's
own user would (files planted through ``as_user``: that user's uid, gid and groups, no capabilities).
A scenario raises AssertionError when the attack works and returns the checks it made; the test suite
runs each once (tests/reliability/test_security.py) and ``make reliability`` many times.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
from collections.abc import Callable

from tests.helpers import Site, call_direct, call_hook, crash

Scenario = Callable[[Site, random.Random], list[str]]


def as_user(site: Site, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Python ``code`` run as the job's user, the way a user's own shell on the node would."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={site.user.uid}",
            f"--regid={site.user.gid}",
            "--init-groups",
            "--inh-caps=-all",
            "--",
            "/usr/bin/python3",
            "-c",
            code,
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


DEEP_TREE = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
for _ in range(int(sys.argv[2])):
    os.mkdir("d", dir_fd=fd)
    child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = child
"""


def _psnc(site: Site, **keys: object) -> None:
    site.configure(
        backend="psnc",
        **{
            "backends.psnc.chkpnt": str(site.standin("chkpnt")),
            "backends.psnc.resume": str(site.standin("resume")),
        },
        **keys,  # type: ignore[arg-type]
    )


def deep_trees(site: Site, rng: random.Random) -> list[str]:
    """A user's folder tree thousands of levels deep, left where root cleans up or measures: in a
    killed restart's work folder, in their own image (job-user mode) and in a stale incoming folder.
    None of it may break a restart, list, prune, metrics or the next checkpoint, for anyone."""
    depth = rng.randrange(1500, 4000)
    metrics = site.base / "metrics.prom"
    _psnc(site, metrics_file=str(metrics), **{"backends.psnc.run_as": "job-user"})
    job = site.start_job("3001.head")
    args = site.torque_args(job)
    assert call_hook(args, site.config).returncode == 0
    [generation] = site.generations("3001.head")
    as_user(site, DEEP_TREE, str(generation / "image"), str(depth))

    # the work folder of a restart that pbs_mom killed with -9: its criu/ folder was the user's
    (site.spool / ".restarts").mkdir(mode=0o711)
    stale = site.spool / ".restarts" / f"{socket.gethostname()}.{2**22 + rng.randrange(1000)}.1"
    stale.mkdir(mode=0o711)
    (stale / "criu").mkdir(mode=0o700)
    os.chown(stale / "criu", site.user.uid, site.user.gid)
    as_user(site, DEEP_TREE, str(stale / "criu"), str(depth))

    listing = call_direct(["list"], site.config)
    assert listing.returncode == 0, f"list: {listing.returncode} {listing.stderr}"
    checks = [f"a tree {depth} folders deep in the user's own image: list still works (0)"]

    other = site.start_job("3002.head", app_env={"COUNTER_LIMIT": "30"})
    assert call_hook(site.torque_args(other), site.config).returncode == 0, "another job's checkpoint failed"
    counted = 'mom_checkpoint_checkpoints_total{backend="psnc"} 2.0'
    assert counted in metrics.read_text(), f"the metrics file missed a checkpoint: {metrics.read_text()}"
    checks.append("another job's checkpoint with metrics_file set (the spool's size is measured): 0")

    second = call_hook(site.torque_args(job, depth="1"), site.config)
    assert second.returncode == 0, f"the next checkpoint (DEPTH 1 prunes the deep one): {second.stderr}"
    assert not generation.exists(), "the generation with the deep tree was not pruned"
    checks.append("the job's next checkpoint prunes the generation holding the deep tree (0)")

    crash(other)
    restart = call_direct(["--job", "3002.head"], site.config, program="mom-restart")
    assert restart.returncode == 0, f"mom-restart: {restart.returncode} {restart.stderr}"
    assert not stale.exists(), "the killed restart's work folder was not cleaned"
    checks.append("a later restart of another job cleans the deep work folder and restores (0)")

    pruned = call_direct(["prune", "--keep", "1"], site.config)
    assert pruned.returncode == 0, f"prune: {pruned.returncode} {pruned.stderr}"
    checks.append("prune works (0)")
    return checks


NEEDS_CRIU: set[Scenario] = set()

SECURITY: dict[str, tuple[Scenario, int]] = {
    # name: (scenario, runs by `make reliability`)
    "a folder tree thousands deep where root cleans up and measures": (deep_trees, 3),
}

"""kill -9 of the hook at random moments of a real CRIU checkpoint never damages the previous complete
generation, never leaves an incomplete one looking complete, and the next checkpoint succeeds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from tests.helpers import MOM_ENV, Site, installed, verify_generation

pytestmark = pytest.mark.usefixtures("criu")
ROUNDS = 12


def test_kill_9_at_random_moments(site: Site) -> None:
    seed = int(os.environ.get("KILL9_SEED", str(time.time_ns() % 100_000)))
    rng = random.Random(seed)
    print(f"replay with KILL9_SEED={seed}")  # shown with any failure, a verify_generation one too
    site.configure(keep=3, **{"backends.criu.run_as": "job-user"})
    job = site.start_job("301.head", app_env={"COUNTER_MIB": "32"})
    hook = str(installed("mom-checkpoint"))
    env = {**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)}

    # one good checkpoint first, and how long a whole run takes
    started = time.monotonic()
    first = subprocess.run([hook, *map(str, site.torque_args(job))], env=env, capture_output=True)
    assert first.returncode == 0, first.stderr
    full_run = time.monotonic() - started

    killed_at = []
    for _ in range(ROUNDS):
        newest = site.generations("301.head")[-1]
        newest_manifest = verify_generation(newest)
        delay = rng.uniform(0, full_run * 1.1)
        proc = subprocess.Popen([hook, *map(str, site.torque_args(job))], env=env, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(round(delay, 3))
        context = f"seed {seed}, kills at {killed_at}"
        # the newest complete generation before the kill is untouched (keep=3: one more cannot prune it)
        assert verify_generation(newest) == newest_manifest, f"{context}: the previous generation changed"
        # and every folder with a generation name is complete
        for generation in site.generations("301.head"):
            verify_generation(generation)
        count = job.count()
        assert job.wait_count(count + 2, timeout=20) > count, f"{context}: the job stopped"

    final = subprocess.run([hook, *map(str, site.torque_args(job))], env=env, capture_output=True)
    assert final.returncode == 0, f"seed {seed}, kills at {killed_at}: {final.stderr.decode()}"
    generations = site.generations("301.head")
    for generation in generations:
        verify_generation(generation)
    assert site.incoming() == [], "the last run must have cleaned up what the killed runs left"
    assert site.pruning_left() == [], "what the last run pruned was not removed"
    assert len(generations) <= 3
    assert job.is_running()

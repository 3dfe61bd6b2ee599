"""Each fault scenario once (the kill -9 one once per phase); `make reliability` runs them many times."""

from __future__ import annotations

import random

import pytest

from tests.helpers import Site
from tests.reliability.faults import FAULTS, PHASES, kill9_hook

pytestmark = pytest.mark.usefixtures("criu")


@pytest.mark.parametrize(
    ("phase", "seed"),
    # a fixed seed for each phase, in the test's id (hash(phase) differed from run to run: no replay)
    [pytest.param(phase, seed, id=f"{phase}, seed {seed}") for seed, phase in enumerate(PHASES, start=1)],
)
def test_kill9_of_the_hook(site: Site, phase: str, seed: int) -> None:
    checks = kill9_hook(site, random.Random(seed), phase)
    assert checks[0] == f"hook killed with -9 {phase}"


@pytest.mark.parametrize(
    "name", [name for name, (scenario, _) in FAULTS.items() if scenario is not kill9_hook]
)
def test_fault(site: Site, name: str) -> None:
    scenario, _runs = FAULTS[name]
    assert scenario(site, random.Random(7))

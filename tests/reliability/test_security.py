"""Each security scenario once; `make reliability` runs them many times and publishes the counts."""

from __future__ import annotations

import random

import pytest

from tests.helpers import Site
from tests.reliability.security import HOSTILE_DUMPS, NEEDS_CRIU, SECURITY, hostile_dump


@pytest.mark.parametrize("name", list(SECURITY))
def test_security(site: Site, name: str, request: pytest.FixtureRequest) -> None:
    scenario, _runs = SECURITY[name]
    if scenario in NEEDS_CRIU:
        request.getfixturevalue("criu")
    checks = scenario(site, random.Random(13))
    assert checks and all(isinstance(c, str) and c for c in checks)


@pytest.mark.usefixtures("criu")
@pytest.mark.parametrize("attack", HOSTILE_DUMPS, ids=[a[0] for a in HOSTILE_DUMPS])
def test_every_hostile_dump(site: Site, attack: tuple[str, str, int, int, str]) -> None:
    """Each thing a user's own CRIU can leave in its image, once (the scenario above picks one)."""
    checks = hostile_dump(site, random.Random(13), attack)
    assert checks and all(isinstance(c, str) and c for c in checks)

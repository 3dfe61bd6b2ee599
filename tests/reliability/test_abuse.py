"""Each abuse scenario once; `make reliability` runs them many times and publishes the counts."""

from __future__ import annotations

import random

import pytest

from tests.helpers import Site
from tests.reliability.abuse import ABUSE, private_modes


@pytest.mark.parametrize("name", list(ABUSE))
def test_abuse(site: Site, name: str, request: pytest.FixtureRequest) -> None:
    scenario, _runs = ABUSE[name]
    if scenario is private_modes:
        request.getfixturevalue("criu")
    checks = scenario(site, random.Random(11))
    assert checks and all(isinstance(c, str) and c for c in checks)

"""Each security scenario once; `make reliability` runs them many times and publishes the counts."""

from __future__ import annotations

import random

import pytest

from tests.helpers import Site
from tests.reliability.security import NEEDS_CRIU, SECURITY


@pytest.mark.parametrize("name", list(SECURITY))
def test_security(site: Site, name: str, request: pytest.FixtureRequest) -> None:
    scenario, _runs = SECURITY[name]
    if scenario in NEEDS_CRIU:
        request.getfixturevalue("criu")
    checks = scenario(site, random.Random(13))
    assert checks and all(isinstance(c, str) and c for c in checks)

"""Fixtures: a node set-up per test, the job's user, and the real-CRIU gate.

Real-CRIU tests need root and a CRIU >= 4 that passes ``criu check``. Elsewhere they skip with the
reason; under CI (CI=true) a skipped real-CRIU test is a failure, so CI cannot pass without them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.helpers import TEST_USER, Site, User, criu_problem, make_base, remove_base

IN_CI = os.environ.get("CI", "").lower() == "true"

# The test suite's fuzzing; `make reliability` runs HYPOTHESIS_PROFILE=reliability (many more examples).
settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile("reliability", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"real-CRIU test cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def criu() -> None:
    problem = criu_problem()
    if problem is not None:
        _unavailable(problem)


@pytest.fixture
def job_user() -> User:
    if os.geteuid() != 0:
        _unavailable("needs root to run jobs as another user")
    try:
        return User.named(TEST_USER)
    except KeyError:
        _unavailable(f"test user {TEST_USER} missing (make test-user)")
        raise


@pytest.fixture
def root_user() -> User:
    if os.geteuid() != 0:
        _unavailable("needs root")
    return User.named("root")


@pytest.fixture
def site(job_user: User) -> Iterator[Site]:
    base = make_base()
    node = Site(base, job_user)
    try:
        yield node
    finally:
        node.stop_jobs()
        remove_base(base)


@pytest.fixture
def user_mode(site: Site) -> Site:
    """A site whose CRIU runs as the job's user (root here cannot dump another user's process)."""
    site.configure(**{"backends.criu.run_as": "job-user"})
    return site

"""The backends the conformance suite runs on.

A backend joins the suite by adding a name to ``BACKENDS`` and a branch to ``make_url``
(or a fixture that starts its server). Every test in ``test_conformance.py`` then runs on it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from afterwork import Afterwork
from afterwork.testing import FakeClock

BACKENDS = ["memory", "sqlite", "redis", "redis-cluster", "postgres"]

AwFactory = Callable[..., Afterwork]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend_url(backend_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend_name == "memory":
        return "memory://"
    if backend_name == "sqlite":
        return f"sqlite:///{tmp_path}/afterwork.db"
    if backend_name == "redis":
        # One key prefix per test keeps tests apart on one server.
        url = request.getfixturevalue("redis_url")
        return f"{url}?prefix=afterwork:t{uuid.uuid4().hex[:12]}"
    if backend_name == "redis-cluster":
        # A 3-master + 3-replica cluster; the prefix becomes the hash tag of every key.
        url = request.getfixturevalue("redis_cluster_url")
        return f"{url}?prefix=afterwork:t{uuid.uuid4().hex[:12]}"
    if backend_name == "postgres":
        # One schema per test keeps tests apart on one server.
        url = request.getfixturevalue("postgres_url")
        return f"{url}?schema=t{uuid.uuid4().hex[:12]}"
    raise AssertionError(f"no URL for backend {backend_name!r}")


@pytest.fixture
async def make_aw(backend_url: str, clock: FakeClock) -> AsyncIterator[AwFactory]:
    """Build Afterwork instances on the backend under test; all are closed afterwards."""
    made: list[Afterwork] = []

    def make(**options: object) -> Afterwork:
        options.setdefault("clock", clock)
        options.setdefault("seed", 1234)
        options.setdefault("lease_ttl", 10.0)
        aw = Afterwork(backend_url, **options)  # type: ignore[arg-type]
        made.append(aw)
        return aw

    yield make
    for aw in made:
        await aw.aclose()


@pytest.fixture
async def aw(make_aw: AwFactory) -> AsyncIterator[Afterwork]:
    instance = make_aw()
    async with instance:
        yield instance

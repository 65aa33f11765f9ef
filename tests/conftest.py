from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from typing import Any

import pytest

from .pg_server import PostgresServer
from .redis_cluster import RedisCluster
from .redis_server import RedisServer


@pytest.fixture
def anyio_backend() -> str:
    # afterwork runs on asyncio (what uvicorn and FastAPI use).
    return "asyncio"


class UnsafeDeserialization(AssertionError):
    pass


@pytest.fixture(autouse=True, scope="session")
def no_pickle() -> Iterator[list[str]]:
    """RELIABILITY.md T-NOPICKLE: nothing in the suite may unpickle data.

    (``marshal.loads`` cannot be guarded: Python's import system loads ``.pyc`` with it.)
    """
    calls: list[str] = []
    originals = (pickle.loads, pickle.load)

    def refuse(name: str) -> Any:
        def guard(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise UnsafeDeserialization(f"{name} was called: afterwork must never unpickle")

        return guard

    pickle.loads = refuse("pickle.loads")
    pickle.load = refuse("pickle.load")
    try:
        yield calls
    finally:
        pickle.loads, pickle.load = originals
        assert calls == [], calls


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the session (or ``AFTERWORK_TEST_REDIS_URL``)."""
    url = os.environ.get("AFTERWORK_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="also run the soak tier (tests marked soak: minutes-long load proofs)",
    )
    parser.addoption(
        "--fleet",
        action="store_true",
        default=False,
        help="also run the fleet chaos tier (tests marked fleet: several processes at once)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tiers beyond ``make test``: tests marked ``soak`` run only with ``--soak`` (or
    ``AFTERWORK_SOAK=1``), tests marked ``fleet`` only with ``--fleet`` (or
    ``AFTERWORK_FLEET=1``; ``make chaos``)."""
    tiers = {
        "soak": config.getoption("--soak") or os.environ.get("AFTERWORK_SOAK") == "1",
        "fleet": config.getoption("--fleet") or os.environ.get("AFTERWORK_FLEET") == "1",
    }
    skips = {
        "soak": pytest.mark.skip(reason="soak tier: run with --soak (make soak)"),
        "fleet": pytest.mark.skip(reason="fleet chaos tier: run with --fleet (make chaos)"),
    }
    for item in items:
        for tier, wanted in tiers.items():
            if not wanted and tier in item.keywords:
                item.add_marker(skips[tier])
                break


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A private 3-master + 3-replica Redis Cluster for the session."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    return redis_cluster.url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private postgres for the session (or ``AFTERWORK_TEST_POSTGRES_URL``).

    Tests share it and keep apart by schema (``?schema=`` a name of their own).
    """
    url = os.environ.get("AFTERWORK_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    server = PostgresServer()
    server.start()
    try:
        yield server.url
    finally:
        server.remove()

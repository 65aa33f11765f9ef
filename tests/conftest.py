from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .redis_server import RedisServer


@pytest.fixture
def anyio_backend() -> str:
    # afterwork runs on asyncio (what uvicorn and FastAPI use).
    return "asyncio"


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

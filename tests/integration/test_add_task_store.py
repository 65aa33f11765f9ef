"""``jobs.add_task(registered_task)`` stores the job before the response, or fails it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from afterwork import Afterwork
from afterwork.backends.redis import RedisBackend
from afterwork.fastapi import Jobs

from ..redis_server import RedisServer
from ..servers import serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def make_app(aw: Afterwork, gate: anyio.Event) -> FastAPI:
    app = FastAPI(lifespan=aw.lifespan(worker=False))

    @aw.task(name="welcome")
    async def welcome(user: str) -> str:
        return f"welcome {user}"

    async def after_the_response() -> None:
        await gate.wait()  # a plain background callable, held until the test opens it

    @app.post("/signup/{user}")
    async def signup(user: str, jobs: Jobs) -> dict[str, Any]:
        jobs.add_task(after_the_response)
        job = jobs.add_task(welcome, user)
        return {"id": job.id}

    return app


async def test_the_job_is_stored_before_the_response(redis: RedisServer) -> None:
    aw = Afterwork(redis.url)
    gate = anyio.Event()
    async with serve(make_app(aw, gate)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/signup/ada", timeout=10)
        assert response.status_code == 200
        # The background callable still waits, yet the job is already in the store.
        job = await aw.get_job(response.json()["id"])
        assert job is not None and job.task == "welcome" and job.args == ["ada"]
        gate.set()


async def test_an_unreachable_store_fails_the_request_and_stores_nothing(
    redis: RedisServer,
) -> None:
    backend = RedisBackend(redis.url, retry_for=0.2, connect_timeout=0.2, socket_timeout=0.5)
    aw = Afterwork(backend=backend)
    gate = anyio.Event()
    gate.set()
    async with serve(make_app(aw, gate)) as url, httpx.AsyncClient(base_url=url) as client:
        stored = await client.post("/signup/ada", timeout=10)
        assert stored.status_code == 200
        redis.stop()
        refused = await client.post("/signup/bob", timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.json() == {"detail": "the job store cannot be reached; nothing was enqueued"}
        assert refused.headers["retry-after"] == "1"
        redis.start()  # the same data directory: the AOF holds what was written
        jobs = await aw.list_jobs(task="welcome")
        assert [job.args for job in jobs] == [["ada"]]

"""What ``jobs.add_task(registered_task)`` costs a request: the store write before the response.

Usage::

    .venv/bin/python bench/add_task_cost.py [--requests 500]

Runs a FastAPI app in process (httpx's ASGI transport, no sockets: a loopback server here
measured 40 ms of delayed ACKs on every request, hiding the difference), once per store
(SQLite in a temporary folder, a private redis-server with AOF ``appendfsync always``, as
the tests run it), and times ``--requests`` sequential requests to two routes: one that
returns at once, one that calls ``jobs.add_task`` with a registered task (stored before
the response is sent). The difference of the medians is the request-path cost of storing
the job.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.redis_server import RedisServer

from afterwork import Afterwork
from afterwork.fastapi import Jobs


def build(url: str) -> FastAPI:
    aw = Afterwork(url)

    @aw.task(name="welcome")
    async def welcome(user: str) -> None: ...

    app = FastAPI(lifespan=aw.lifespan(worker=False))

    @app.get("/plain/{user}")
    async def plain(user: str) -> dict[str, str]:
        return {"user": user}

    @app.get("/add_task/{user}")
    async def add_task(user: str, jobs: Jobs) -> dict[str, str]:
        return {"id": jobs.add_task(welcome, user).id}

    return app


async def timings(app: FastAPI, path: str, requests: int) -> list[float]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for n in range(20):  # warm up
            await client.get(f"{path}/w{n}")
        samples = []
        for n in range(requests):
            start = time.perf_counter()
            response = await client.get(f"{path}/u{n}")
            samples.append(time.perf_counter() - start)
            response.raise_for_status()
    return samples


async def measure(store: str, url: str, requests: int) -> None:
    app = build(url)
    async with app.router.lifespan_context(app):
        plain = await timings(app, "/plain", requests)
        stored = await timings(app, "/add_task", requests)
    p50 = statistics.median(plain) * 1000
    s50 = statistics.median(stored) * 1000
    s99 = statistics.quantiles(stored, n=100)[98] * 1000
    print(
        f"{store:7} plain route p50 {p50:6.2f} ms | add_task p50 {s50:6.2f} ms, "
        f"p99 {s99:6.2f} ms | cost p50 {s50 - p50:+.2f} ms"
    )


async def main(requests: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        await measure("sqlite", f"sqlite:///{folder}/afterwork.db", requests)
        server = RedisServer(Path(folder) / "redis")
        server.start()
        try:
            await measure("redis", server.url, requests)
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    asyncio.run(main(parser.parse_args().requests))

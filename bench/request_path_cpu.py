"""CPU per request of ``request_path.py``'s routes, and of what each is made of.

Usage::

    BENCH_WORKER=0|1 .venv/bin/python bench/request_path_cpu.py [--requests N] [--store redis]

The app of ``request_path.py`` (``/bg``, ``/plain``, ``/task``, ``/none``) plus four routes
that split the difference between ``/plain`` and ``/bg``: ``/dep`` takes ``jobs: Jobs``
and adds nothing, ``/bgdep`` the same with ``background: BackgroundTasks``; ``/aplain``
and ``/abg`` add an *async* no-op (no thread hop). Routes alternate every 100 requests,
each chunk followed by 50 ms so that the write-behind's flush of its jobs counts in its
own chunk; each figure is the median chunk's CPU per request of this process (the
lifespan worker and SQLite's connection thread included, a Redis server's CPU apart).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi import BackgroundTasks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from afterwork.fastapi import Jobs
from bench.request_path import build

ROUTES = ("none", "bgdep", "dep", "bg", "plain", "abg", "aplain", "task")
CHUNK = 100


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def async_fn(user: str) -> None:
    """An async post-response task that takes microseconds."""


async def measure(url: str, requests: int) -> dict[str, float]:
    app, _ = build(url)

    @app.get("/dep/{user}")
    async def dep(user: str, jobs: Jobs) -> dict[str, str]:
        return {"user": user}

    @app.get("/bgdep/{user}")
    async def bgdep(user: str, background: BackgroundTasks) -> dict[str, str]:
        return {"user": user}

    @app.get("/aplain/{user}")
    async def aplain(user: str, jobs: Jobs) -> dict[str, str]:
        return {"id": jobs.add_task(async_fn, user).id}

    @app.get("/abg/{user}")
    async def abg(user: str, background: BackgroundTasks) -> dict[str, str]:
        background.add_task(async_fn, user)
        return {"user": user}

    chunks: dict[str, list[float]] = {route: [] for route in ROUTES}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for route in ROUTES:  # warm up
                for n in range(CHUNK):
                    (await client.get(f"/{route}/u{n}")).raise_for_status()
            for _ in range(max(requests // CHUNK, 1)):
                for route in ROUTES:
                    cpu = _cpu()
                    for n in range(CHUNK):
                        (await client.get(f"/{route}/u{n}")).raise_for_status()
                    await asyncio.sleep(0.05)
                    chunks[route].append((_cpu() - cpu) / CHUNK)
    return {route: statistics.median(values) for route, values in chunks.items()}


async def main(store: str, requests: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        stop: Callable[[], None] = lambda: None  # noqa: E731
        if store == "redis":
            from tests.redis_server import RedisServer

            server = RedisServer(Path(folder) / "redis")
            server.start()
            url, stop = server.url, server.stop
        else:
            url = f"sqlite:///{folder}/afterwork.db"
        try:
            cpu = await measure(url, requests)
        finally:
            stop()
    worker = os.environ.get("BENCH_WORKER", "1")
    print(
        f"{store:6} worker={worker} CPU µs/request: "
        + " | ".join(f"{route} {value * 1e6:4.0f}" for route, value in cpu.items())
        + f" | load {os.getloadavg()[0]:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--store", default="sqlite", choices=("sqlite", "redis"))
    args = parser.parse_args()
    asyncio.run(main(args.store, args.requests))

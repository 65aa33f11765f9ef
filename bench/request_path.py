"""Requests/s of a route adding a post-response task: ``Jobs`` vs ``BackgroundTasks``.

Usage::

    .venv/bin/python bench/request_path.py [--requests 2000] [--rounds 3] [--stores sqlite,redis]

One FastAPI app per store, in process (httpx's ASGI transport, no sockets), with the
lifespan worker on (``lifespan=aw.lifespan``, the default). One request at a time, rounds
interleaved, to four routes:

* ``/bg``: ``background.add_task(plain_fn)`` (Starlette ``BackgroundTasks``): the reference;
* ``/plain``: ``jobs.add_task(plain_fn)`` (a plain function, tracked as an in-process job);
* ``/task``: ``jobs.add_task(registered_task)`` (stored before the response; the worker runs it);
* ``/none``: a route that adds nothing (the floor).

The routes alternate every 50 requests; each figure is the median of those chunks'
requests/s, and the ratio is against ``/bg`` measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from fastapi import BackgroundTasks, FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from afterwork import Afterwork
from afterwork.fastapi import Jobs

ROUTES = ("bg", "plain", "task", "none")
CHUNK = 50


def plain_fn(user: str) -> None:
    """A post-response task that takes microseconds."""


def build(url: str) -> tuple[FastAPI, Afterwork]:
    aw = Afterwork(url)

    @aw.task(name="welcome")
    async def welcome(user: str) -> None: ...

    app = FastAPI(lifespan=aw.lifespan(worker=os.environ.get("BENCH_WORKER", "1") == "1"))

    @app.get("/bg/{user}")
    async def bg(user: str, background: BackgroundTasks) -> dict[str, str]:
        background.add_task(plain_fn, user)
        return {"user": user}

    @app.get("/plain/{user}")
    async def plain(user: str, jobs: Jobs) -> dict[str, str]:
        return {"id": jobs.add_task(plain_fn, user).id}

    @app.get("/task/{user}")
    async def task(user: str, jobs: Jobs) -> dict[str, str]:
        return {"id": jobs.add_task(welcome, user).id}

    @app.get("/none/{user}")
    async def none(user: str) -> dict[str, str]:
        return {"user": user}

    return app, aw


CPU: dict[str, float] = {}  # route -> CPU seconds of this process while serving it


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def rate(client: httpx.AsyncClient, route: str, requests: int) -> float:
    start, cpu = time.perf_counter(), _cpu()
    for n in range(requests):
        response = await client.get(f"/{route}/u{n}")
        response.raise_for_status()
    CPU[route] = CPU.get(route, 0.0) + _cpu() - cpu
    return requests / (time.perf_counter() - start)


async def measure(store: str, url: str, requests: int, rounds: int) -> dict[str, float]:
    app, aw = build(url)
    chunks: dict[str, list[float]] = {route: [] for route in ROUTES}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for route in ROUTES:
                await rate(client, route, 50)  # warm up
            CPU.clear()
            # Routes alternate every CHUNK requests, so a burst of load elsewhere on the
            # machine hits them all alike; the median chunk is the figure.
            for _ in range(rounds * max(requests // CHUNK, 1)):
                for route in ROUTES:
                    chunks[route].append(await rate(client, route, CHUNK))
        if os.environ.get("BENCH_WORKER", "1") == "1":
            await aw.join(timeout=60)
    best = {route: statistics.median(rates) for route, rates in chunks.items()}
    bg = best["bg"]
    served = {route: CHUNK * len(rates) for route, rates in chunks.items()}
    print(
        f"{store:7} "
        + " | ".join(f"{r} {best[r]:7,.0f}/s" for r in ROUTES)
        + f" | plain {best['plain'] / bg:.2f}x, task {best['task'] / bg:.2f}x of bg",
        flush=True,
    )
    print(
        "        CPU per request (this process, worker included): "
        + " | ".join(f"{r} {CPU[r] / served[r] * 1e6:5.0f} µs" for r in ROUTES),
        flush=True,
    )
    return best


async def main(requests: int, rounds: int, stores: list[str]) -> None:
    print(f"load average {os.getloadavg()[0]:.2f}; {requests} requests x {rounds} rounds")
    with tempfile.TemporaryDirectory() as folder:
        if "sqlite" in stores:
            await measure("sqlite", f"sqlite:///{folder}/afterwork.db", requests, rounds)
        if "redis" in stores:
            from tests.redis_server import RedisServer

            server = RedisServer(Path(folder) / "redis")
            server.start()
            try:
                await measure("redis", server.url, requests, rounds)
            finally:
                server.stop()
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stores", default="sqlite,redis")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds, args.stores.split(",")))

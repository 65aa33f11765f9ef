"""SAQ on a private Redis: the scenarios of bench/redis_bench.py (see common.py).

    bench/.venv-saq/bin/python -m bench.peers.saq_bench redis://127.0.0.1:PORT/0

No bulk enqueue API (``Queue.map`` enqueues one by one and waits for results; batch: n/a).
The worker runs at SAQ's defaults (``concurrency=10``); ``concurrency=100`` for (c).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from saq import Queue

from bench.peers import common


async def noop(ctx: dict[str, Any]) -> None:
    common.noop_job()


async def sleepy(ctx: dict[str, Any]) -> None:
    await common.sleepy_job_async()


async def stamp(ctx: dict[str, Any], *, t0: float) -> None:
    common.stamp_job(t0)


settings: dict[str, Any] = {
    "queue": Queue.from_url(common.redis_url()),
    "functions": [noop, sleepy, stamp],
}
if common.concurrency():
    settings["concurrency"] = common.concurrency()


class Peer:
    name = "SAQ"
    version = f"{version('saq')} (redis-py {version('redis')})"
    notes = ["no bulk enqueue API"]

    async def open(self) -> None:
        self.queue = Queue.from_url(common.redis_url())
        await self.queue.connect()

    async def close(self) -> None:
        await self.queue.disconnect()

    async def enqueue(self, kind: str, *args: float) -> None:
        if args:
            await self.queue.enqueue(kind, t0=args[0])
        else:
            await self.queue.enqueue(kind)

    async def enqueue_batch(self, kind: str, count: int) -> bool:
        return False

    def worker(self, concurrency: int | None) -> list[str]:
        return [str(Path(sys.executable).with_name("saq")), "bench.peers.saq_bench.settings"]


if __name__ == "__main__":
    common.main("bench.peers.saq_bench")

"""ARQ on a private Redis: the scenarios of bench/redis_bench.py (see common.py).

    bench/.venv-arq/bin/python -m bench.peers.arq_bench redis://127.0.0.1:PORT/0

No bulk enqueue API (batch: n/a). The worker runs at ARQ's defaults (``max_jobs=10``,
``poll_delay=0.5``: an idle worker polls the queue every 0.5 s); ``max_jobs=100`` for (c).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from bench.peers import common


async def noop(ctx: dict[str, Any]) -> None:
    common.noop_job()


async def sleepy(ctx: dict[str, Any]) -> None:
    await common.sleepy_job_async()


async def stamp(ctx: dict[str, Any], t0: float) -> None:
    common.stamp_job(t0)


class WorkerSettings:
    functions = [noop, sleepy, stamp]
    redis_settings = RedisSettings.from_dsn(common.redis_url())
    if common.concurrency():
        max_jobs = common.concurrency()


class Peer:
    name = "ARQ"
    version = f"{version('arq')} (redis-py {version('redis')})"
    notes = ["no bulk enqueue API", "idle worker polls every 0.5 s (poll_delay default)"]

    async def open(self) -> None:
        self.pool: ArqRedis = await create_pool(RedisSettings.from_dsn(common.redis_url()))

    async def close(self) -> None:
        await self.pool.aclose()

    async def enqueue(self, kind: str, *args: float) -> None:
        await self.pool.enqueue_job(kind, *args)

    async def enqueue_batch(self, kind: str, count: int) -> bool:
        return False

    def worker(self, concurrency: int | None) -> list[str]:
        return [str(Path(sys.executable).with_name("arq")), "bench.peers.arq_bench.WorkerSettings"]


if __name__ == "__main__":
    common.main("bench.peers.arq_bench")

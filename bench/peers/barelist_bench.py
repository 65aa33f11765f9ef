"""The bare Redis list: the physical limit of this machine, with no guarantees at all.

    .venv/bin/python -m bench.peers.barelist_bench redis://127.0.0.1:PORT/0

Enqueue is one ``LPUSH`` of a JSON ``[name, args]`` per job (a batch: one ``LPUSH`` of
1,000 values). The worker (``bench/peers/barelist_worker.py``) pops up to 100 per round trip
(``RPOP key 100``; ``BRPOP`` when the list is empty) and runs them in order. No
acknowledgement, no lease, no retry, no result, no event: a job popped by a worker that dies
is gone. A reference for the drain and the latency, not a job queue.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version

import redis.asyncio as aioredis

from bench.peers import common

KEY = "bench:barelist"


class Peer:
    name = "bare list"
    version = f"LPUSH / RPOP 100 (redis-py {version('redis')})"
    notes = ["no guarantees: popped is gone", "pops 100 per round trip"]

    async def open(self) -> None:
        self.redis = aioredis.Redis.from_url(common.redis_url())

    async def close(self) -> None:
        await self.redis.aclose()

    async def enqueue(self, kind: str, *args: float) -> None:
        await self.redis.lpush(KEY, json.dumps([kind, list(args)]))

    async def enqueue_batch(self, kind: str, count: int) -> bool:
        await self.redis.lpush(KEY, *[json.dumps([kind, []])] * count)
        return True

    def worker(self, concurrency: int | None) -> list[str] | None:
        if concurrency:
            return None  # it runs each popped batch at once; no setting
        return [sys.executable, "-m", "bench.peers.barelist_worker"]


if __name__ == "__main__":
    common.main("bench.peers.barelist_bench")

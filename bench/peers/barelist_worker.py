"""The bare list's worker: pop up to 100 jobs per round trip, run them (no guarantees)."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis

from bench.peers import common
from bench.peers.barelist_bench import KEY


async def main() -> None:
    client = aioredis.Redis.from_url(common.redis_url())
    while True:
        raw = await client.rpop(KEY, 100)
        if not raw:
            popped = await client.brpop([KEY], timeout=1)
            if not popped:
                continue
            raw = [popped[1]]
        sleeps = []
        for item in raw:
            name, args = json.loads(item)
            if name == "noop":
                common.noop_job()
            elif name == "stamp":
                common.stamp_job(*args)
            else:
                sleeps.append(common.sleepy_job_async())
        if sleeps:
            await asyncio.gather(*sleeps)


if __name__ == "__main__":
    asyncio.run(main())

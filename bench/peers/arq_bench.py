"""ARQ on the same Redis: enqueue one at a time, drain, latency (run in bench/.venv).

bench/.venv/bin/python bench/peers/arq_bench.py redis://127.0.0.1:PORT/0
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from arq import create_pool
from arq.connections import RedisSettings

N = 10_000


async def noop(ctx: dict[str, object]) -> None:
    return None


class WorkerSettings:
    functions = [noop]
    burst = True
    max_jobs = 10
    poll_delay = 0.5


async def main(url: str) -> None:
    settings = RedisSettings.from_dsn(url)
    WorkerSettings.redis_settings = settings  # type: ignore[attr-defined]
    pool = await create_pool(settings)
    await pool.flushdb()
    started = time.perf_counter()
    for _ in range(N):
        await pool.enqueue_job("noop")
    single = N / (time.perf_counter() - started)
    # drain: one worker process, burst mode, timed from spawn to exit
    started = time.perf_counter()
    subprocess.run(  # noqa: ASYNC221 - the timed section is only this call
        [sys.executable, "-c", f"import sys; sys.argv=['x']; from arq.worker import run_worker; "
         f"import bench.peers.arq_bench as b; from arq.connections import RedisSettings; "
         f"b.WorkerSettings.redis_settings = RedisSettings.from_dsn({url!r}); "
         f"run_worker(b.WorkerSettings)"],
        check=True, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    drain = N / (time.perf_counter() - started)
    print(
        f"arq: enqueue_single_per_s={single:.0f} drain_per_s={drain:.0f} (drain includes start-up)"
    )
    await pool.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

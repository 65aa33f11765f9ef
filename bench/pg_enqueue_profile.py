"""Where a batch enqueue on PostgreSQL spends its client CPU: ``aw.enqueue_many`` of 1,000.

    PYTHONPATH=src .venv/bin/python bench/pg_enqueue_profile.py [--batches 20] [--top 25]
    PYTHONPATH=src .venv/bin/python bench/pg_enqueue_profile.py --no-profile  # CPU per job only

Starts one private durable ``postgres`` (as bench/pg_bench.py does), opens an ``Afterwork``
on it and enqueues ``--batches`` batches of ``--batch`` no-op jobs the way
bench/peers/pg_afterwork.py does (``build_job`` per job, then ``enqueue_many``), after one
warm-up batch. Prints the wall time, jobs/s and this process's CPU microseconds per job
(``time.process_time``: load-independent), split into building the jobs and storing them,
then (unless ``--no-profile``) cProfile's top functions by their own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pg_server import PostgresServer  # noqa: E402


async def run(url: str, batches: int, batch: int, profile: cProfile.Profile | None) -> None:
    from afterwork import Afterwork

    aw = Afterwork(url)

    @aw.task(name="noop")
    async def noop() -> None:
        pass

    async with aw:
        await aw.enqueue_many([aw.build_job(noop, (), {}, {}) for _ in range(batch)])  # warm
        build_cpu = store_cpu = 0.0
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        for _ in range(batches):
            t0 = time.process_time()
            jobs = [aw.build_job(noop, (), {}, {}) for _ in range(batch)]
            t1 = time.process_time()
            await aw.enqueue_many(jobs)
            t2 = time.process_time()
            build_cpu += t1 - t0
            store_cpu += t2 - t1
        if profile is not None:
            profile.disable()
        wall = time.perf_counter() - started
    count = batches * batch
    print(f"{count} jobs in {wall:.3f} s: {count / wall:,.0f} jobs/s")
    print(
        f"client CPU per job: {(build_cpu + store_cpu) / count * 1e6:.1f} µs"
        f" (build_job {build_cpu / count * 1e6:.1f}, enqueue_many {store_cpu / count * 1e6:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    server = PostgresServer(durable=True)
    server.start()
    try:
        profile = None if args.no_profile else cProfile.Profile()
        asyncio.run(run(server.url, args.batches, args.batch, profile))
    finally:
        server.remove()
    if profile is not None:
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()

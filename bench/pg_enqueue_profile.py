"""Where a batch enqueue on PostgreSQL spends its client CPU: ``aw.enqueue_many`` of 1,000.

    PYTHONPATH=src .venv/bin/python bench/pg_enqueue_profile.py [--batches 20] [--top 25]
    PYTHONPATH=src .venv/bin/python bench/pg_enqueue_profile.py --no-profile  # CPU per job only
    PYTHONPATH=src .venv/bin/python bench/pg_enqueue_profile.py --single 2000  # one at a time

Starts one private durable ``postgres`` (as bench/pg_bench.py does), opens an ``Afterwork``
on it and enqueues ``--batches`` batches of ``--batch`` no-op jobs the way
bench/peers/pg_afterwork.py does (``build_job`` per job, then ``enqueue_many``), after one
warm-up batch. Prints the wall time, jobs/s and this process's CPU microseconds per job
(``time.process_time``: load-independent), split into building the jobs and storing them,
and the server's (the postmaster and its children, from ``/proc``), then (unless
``--no-profile``) cProfile's top functions by their own time. ``--single N``
instead enqueues N jobs one at a time (``task.enqueue()``, each awaited), as scenario (a)'s
first row does, and prints this process's and the server's CPU per job (the postmaster and
its children, from ``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pg_server import PostgresServer  # noqa: E402


def server_cpu(postmaster: int) -> float:
    """CPU seconds of ``postmaster`` and its live children (``/proc``)."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def single(url: str, count: int, postmaster: int, profile: cProfile.Profile | None) -> None:
    from afterwork import Afterwork

    aw = Afterwork(url)

    @aw.task(name="noop")
    async def noop() -> None:
        pass

    async with aw:
        for _ in range(100):  # warm
            await noop.enqueue()
        server0, cpu0, started = server_cpu(postmaster), time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        for _ in range(count):
            await noop.enqueue()
        if profile is not None:
            profile.disable()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
        server = server_cpu(postmaster) - server0
    print(f"{count} jobs one at a time in {wall:.3f} s: {count / wall:,.0f} jobs/s")
    print(f"client / server CPU per job: {cpu / count * 1e6:.0f} / {server / count * 1e6:.0f} µs")


async def run(
    url: str, batches: int, batch: int, postmaster: int, profile: cProfile.Profile | None
) -> None:
    from afterwork import Afterwork

    aw = Afterwork(url)

    @aw.task(name="noop")
    async def noop() -> None:
        pass

    async with aw:
        await aw.enqueue_many([aw.build_job(noop, (), {}, {}) for _ in range(batch)])  # warm
        build_cpu = store_cpu = 0.0
        server0, started = server_cpu(postmaster), time.perf_counter()
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
        server = server_cpu(postmaster) - server0
    count = batches * batch
    print(f"{count} jobs in {wall:.3f} s: {count / wall:,.0f} jobs/s")
    print(
        f"client CPU per job: {(build_cpu + store_cpu) / count * 1e6:.1f} µs"
        f" (build_job {build_cpu / count * 1e6:.1f}, enqueue_many {store_cpu / count * 1e6:.1f});"
        f" server CPU per job: {server / count * 1e6:.1f} µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--single", type=int, default=0, help="N jobs one at a time instead")
    args = parser.parse_args()
    server = PostgresServer(durable=True)
    server.start()
    try:
        profile = None if args.no_profile else cProfile.Profile()
        assert server.process is not None
        if args.single:
            asyncio.run(single(server.url, args.single, server.process.pid, profile))
        else:
            asyncio.run(run(server.url, args.batches, args.batch, server.process.pid, profile))
    finally:
        server.remove()
    if profile is not None:
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()

"""Fleet-wide concurrency: what the store's check costs when it does not bind (issue 13).

Usage::

    python bench/flow_bench.py [--jobs 10000] [--repeat 3] [--stores sqlite,redis]
    python bench/flow_bench.py --keys [--stores memory,sqlite,redis]
    python bench/flow_bench.py --rate [--jobs 10000] [--repeat 3] [--stores sqlite,redis]

``--keys`` measures head-of-line blocking instead: 20 keys x 50 jobs of a task with
``concurrency=1, concurrency_key="key"`` (each job sleeps 10 ms), one of them busy with 500
more, run by one in-process worker (concurrency 20). Ten times while the busy key has a
backlog, a job of a new (quiet) key is enqueued: its enqueue-to-start latency is printed
(target: within 100 ms), with the peak of running jobs per key (must be 1).

Drains ``--jobs`` pre-enqueued no-op jobs with ``aw.drain(concurrency=50)`` in this process,
once with a plain task and once with ``@aw.task(concurrency=100_000)`` (high enough never to
bind), alternating the two for ``--repeat`` rounds on a fresh store each. Prints the median
throughput of each and their ratio (the target: at least 85 %). ``--rate`` does the same
with ``@aw.task(rate_limit=RateLimit(10_000_000, per=1.0))`` instead (a rate limit that
never binds: every start is still logged and counted). Redis runs on a private
``redis-server`` (AOF ``appendfsync always``, as in tests), SQLite on a fresh file (WAL).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402

from afterwork import Afterwork, JobStatus, RateLimit  # noqa: E402

BATCH = 500


async def drain(url: str, jobs: int, limited: bool, rate: bool = False) -> float:
    aw = Afterwork(url)

    @aw.task(
        name="noop",
        concurrency=100_000 if limited and not rate else None,
        rate_limit=RateLimit(10_000_000, per=1.0) if limited and rate else None,
    )
    async def noop(n: int) -> int:
        return n

    async with aw:
        for first in range(0, jobs, BATCH):
            built = [
                aw.build_job(noop, (n,), {}, {}) for n in range(first, min(first + BATCH, jobs))
            ]
            await aw.enqueue_many(built)
        started = time.perf_counter()
        ran = await aw.drain(concurrency=50)
        elapsed = time.perf_counter() - started
    assert ran == jobs, (ran, jobs)
    return jobs / elapsed


async def store(
    name: str, jobs: int, repeat: int, redis_url: str | None, tmp: Path, rate: bool = False
) -> None:
    rates: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(repeat):
        for limited in (False, True) if round_ % 2 == 0 else (True, False):
            if name == "sqlite":
                url = f"sqlite:///{tmp}/{uuid.uuid4().hex}.db"
            else:
                url = f"{redis_url}?prefix=bench{uuid.uuid4().hex[:8]}"
            rates[limited].append(await drain(url, jobs, limited, rate))
    plain, capped = statistics.median(rates[False]), statistics.median(rates[True])
    setting = "rate_limit=RateLimit(10000000, per=1.0)" if rate else "concurrency=100000"
    print(
        f"{name}: drain {jobs} no-ops  plain {plain:8.0f} jobs/s  {setting}"
        f" {capped:8.0f} jobs/s  ratio {capped / plain:6.1%}"
        f"  (runs: plain {[round(r) for r in rates[False]]},"
        f" capped {[round(r) for r in rates[True]]})"
    )


async def keys(url: str) -> None:
    aw = Afterwork(url, poll_interval=0.5)
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    started: dict[int, float] = {}

    @aw.task(name="keyed", concurrency=1, concurrency_key="key")
    async def keyed(key: str, n: int) -> None:
        if key.startswith("quiet"):
            started[n] = time.perf_counter()
        running[key] += 1
        peak[key] = max(peak[key], running[key])
        await asyncio.sleep(0.01)
        running[key] -= 1

    async with aw:
        built = [aw.build_job(keyed, (f"k{k}", n), {}, {}) for n in range(50) for k in range(20)]
        built += [aw.build_job(keyed, ("k0", 50 + n), {}, {}) for n in range(500)]
        await aw.enqueue_many(built)
        latencies: list[float] = []
        async with aw.worker(concurrency=20):
            for n in range(10):
                await asyncio.sleep(0.2)
                enqueued = time.perf_counter()
                job = await keyed.enqueue(f"quiet{n}", n)
                await job.wait(timeout=30)
                latencies.append(started[n] - enqueued)
            backlog = [s for s in await aw.stats() if s.queue == "default"][0]
            waiting = backlog.counts[JobStatus.QUEUED]
    name = url.split(":", 1)[0]
    print(
        f"{name}: quiet key enqueue-to-start  median {statistics.median(latencies) * 1000:6.1f} ms"
        f"  max {max(latencies) * 1000:6.1f} ms  (busy backlog still queued at the end:"
        f" {waiting});  peak running per key {max(peak.values())}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--keys", action="store_true", help="measure head-of-line blocking")
    parser.add_argument("--rate", action="store_true", help="a rate limit instead of a cap")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        server: RedisServer | None = None
        try:
            for name in args.stores.split(","):
                if name == "redis" and server is None:
                    server = RedisServer(tmp / "redis")
                    server.start()
                url = server.url if server is not None else None
                if args.keys:
                    await keys(
                        "memory://"
                        if name == "memory"
                        else f"sqlite:///{tmp}/keys.db"
                        if name == "sqlite"
                        else f"{url}?prefix=keys{uuid.uuid4().hex[:8]}"
                    )
                else:
                    await store(name, args.jobs, args.repeat, url, tmp, args.rate)
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    asyncio.run(main())

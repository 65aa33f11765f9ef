"""afterwork on Redis: throughput and latency (see docs/benchmarks.md, ## Redis).

    python bench/redis_bench.py [--runs 3] [--json out.json]

Starts a private redis-server (no persistence) on a free port, then for each run:
(a) enqueue 10,000 no-op jobs one at a time, from 32 concurrent callers, and in batches
of 1,000; (b) drain 10,000
pre-enqueued no-op jobs with one worker process; (c) 1,000 jobs that each await
``asyncio.sleep(0.05)``, at the default concurrency and at 100; (d) enqueue-to-start
latency on an idle worker, jobs enqueued one at a time 5 ms apart. Durations of (b) and
(c) run from the first job's start to the last job's end by the store's own clock, so the
worker process's start-up is not counted. Prints the median of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402

from afterwork import Afterwork, JobStatus  # noqa: E402
from bench.envs import afterwork_python  # noqa: E402

N_NOOP, N_SLEEP, N_LATENCY = 10_000, 1_000, 300


def start_worker(url: str, concurrency: int | None) -> subprocess.Popen[bytes]:
    command = [afterwork_python(), "-m", "afterwork", "worker", "bench.redis_app:aw"]
    if concurrency:
        command += ["--concurrency", str(concurrency)]
    env = {**os.environ, "AFTERWORK_URL": url}
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


async def wait_succeeded(aw: Afterwork, count: int, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = sum(s.counts[JobStatus.SUCCEEDED] for s in await aw.stats())
        if done >= count:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"only {done} of {count} jobs finished")


async def span(aw: Afterwork) -> float:
    """First start to last finish, by the store's clock, over every job in the prefix."""
    jobs = await aw.list_jobs(limit=1000)
    first, last = float("inf"), 0.0
    before = None
    while jobs:
        for job in jobs:
            first = min(first, job.started_at or first)
            last = max(last, job.finished_at or 0.0)
        before = jobs[-1].id
        jobs = await aw.list_jobs(limit=1000, before=before)
    return last - first


def fresh(url: str, name: str) -> tuple[Afterwork, str]:
    full = f"{url}?prefix=afterwork:bench:{name}:{time.monotonic_ns()}"
    os.environ["AFTERWORK_URL"] = full
    from bench import redis_app

    aw = Afterwork(full)
    for task in redis_app.aw.tasks.values():
        aw.register(task.func, name=task.name, options=task.opts)
    return aw, full


async def one_run(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    # (a) enqueue, one at a time and in batches
    aw, _ = fresh(url, "enq")
    async with aw:
        noop = aw.get_task("noop")
        started = time.perf_counter()
        for _ in range(N_NOOP):
            await noop.enqueue()
        out["enqueue_single_per_s"] = N_NOOP / (time.perf_counter() - started)

        async def caller() -> None:
            for _ in range(N_NOOP // 32):
                await noop.enqueue()

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(32)))
        out["enqueue_c32_per_s"] = N_NOOP // 32 * 32 / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(N_NOOP // 1000):
            await aw.enqueue_many([aw.build_job(noop, (), {}, {}) for _ in range(1000)])
        out["enqueue_batch_per_s"] = N_NOOP / (time.perf_counter() - started)
    # (b) drain pre-enqueued no-ops
    aw, full = fresh(url, "drain")
    async with aw:
        noop = aw.get_task("noop")
        for _ in range(N_NOOP // 1000):
            await aw.enqueue_many([aw.build_job(noop, (), {}, {}) for _ in range(1000)])
        proc = start_worker(full, None)
        try:
            await wait_succeeded(aw, N_NOOP)
        finally:
            stop(proc)
        out["drain_per_s"] = N_NOOP / await span(aw)
    # (c) sleeps, default concurrency and 100
    for concurrency in (None, 100):
        aw, full = fresh(url, f"sleep{concurrency}")
        async with aw:
            sleepy = aw.get_task("sleepy")
            await aw.enqueue_many([aw.build_job(sleepy, (), {}, {}) for _ in range(N_SLEEP)])
            proc = start_worker(full, concurrency)
            try:
                await wait_succeeded(aw, N_SLEEP)
            finally:
                stop(proc)
            out[f"sleep_c{concurrency or 'default'}_s"] = await span(aw)
    # (d) latency on an idle worker
    aw, full = fresh(url, "latency")
    async with aw:
        noop = aw.get_task("noop")
        proc = start_worker(full, None)
        try:
            await noop.enqueue()  # the worker is up once this one ran
            await wait_succeeded(aw, 1, timeout=30)
            ids = []
            for _ in range(N_LATENCY):
                ids.append((await noop.enqueue()).id)
                await asyncio.sleep(0.005)
            await wait_succeeded(aw, N_LATENCY + 1)
        finally:
            stop(proc)
        latencies = []
        for job_id in ids:
            job = await aw.get_job(job_id)
            assert job is not None and job.started_at is not None
            latencies.append((job.started_at - job.created_at) * 1000)
        cuts = statistics.quantiles(latencies, n=100)
        out["latency_p50_ms"], out["latency_p99_ms"] = cuts[49], cuts[98]
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", help="use this Redis instead of a private one")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        folder = Path(tempfile.mkdtemp(prefix="aw-bench-redis-"))
        server = RedisServer(folder)
        server.extra = ["--appendonly", "no"]  # throughput, not durability, is measured
        server.start()
        url = server.url
    try:
        runs: list[dict[str, float]] = []
        for index in range(args.runs):
            runs.append(await one_run(url))
            print(f"run {index + 1}: " + ", ".join(f"{k}={v:.2f}" for k, v in runs[-1].items()))
        median: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print("median: " + ", ".join(f"{k}={v:.2f}" for k, v in median.items()))
        if args.json:
            args.json.write_text(json.dumps({"runs": runs, "median": median}, indent=2))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""What Prometheus metrics and history (``Metrics``, ``History``) cost a burst drain.

Usage::

    python bench/metrics_cost.py [--jobs 3000] [--repeat 5] [--stores sqlite,redis]

For each store, drains ``--jobs`` no-op jobs with one in-process worker
(``aw.drain(concurrency=...)``) three ways: with neither, with ``Metrics(aw)``, and with
``Metrics(aw)`` and ``History(aw)`` (its flush to the store included: the drain's time runs
to the end of ``aw.aclose()``). Runs are interleaved (none, metrics, both, none, ...) on
fresh stores; it prints the median jobs/s of each and the cost in percent, by wall clock
and by this process's CPU time per job (the steadier figure on a shared machine: other
processes' load does not count in it). Redis runs on a private ``redis-server`` (no
persistence) started on a free port and stopped at the end.

It first prints the steady figure under both: the CPU time the middlewares add to one
attempt, measured by running a stored job's attempt through ``aw.middleware_chain``
50,000 times (the attempt itself a no-op), best of 5, minus the same without middleware.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from afterwork import Afterwork, Job
from afterwork.history import History
from afterwork.metrics import Metrics

VARIANTS = ("none", "metrics", "metrics+history")


async def drain_once(url: str, jobs: int, concurrency: int, variant: str) -> tuple[float, float]:
    aw = Afterwork(url)

    @aw.task(name="noop")
    async def noop(n: int) -> int:
        return n

    if variant != "none":
        Metrics(aw)
    if variant == "metrics+history":
        History(aw)
    await aw.open()
    for first in range(0, jobs, 100):
        built = [aw.build_job(noop, (n,), {}, {}) for n in range(first, first + 100)]
        await aw.enqueue_many(built)
    started, cpu = time.perf_counter(), time.process_time()
    ran = await aw.drain(concurrency=concurrency)
    await aw.aclose()  # History flushes here
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert ran == jobs, (ran, jobs)
    return jobs / elapsed, cpu / jobs * 1e6


async def chain_cost(variant: str, rounds: int = 50_000) -> float:
    """CPU microseconds one attempt spends in the middlewares of ``variant`` (best of 5)."""
    from dataclasses import replace

    from afterwork import JobCall, JobStatus
    from afterwork._middleware import run_through

    aw = Afterwork("memory://")

    @aw.task(name="noop")
    async def noop() -> None: ...

    if variant != "none":
        Metrics(aw)
    if variant == "metrics+history":
        History(aw)
    async with aw:
        job = await noop.enqueue()
        done = replace(job, status=JobStatus.SUCCEEDED)
        call = JobCall("attempt", job.task, job.queue, job.id, job=job, worker="w")

        async def attempt() -> Job:
            return done

        chain = aw.middleware_chain
        best = float("inf")
        for _ in range(5):
            cpu = time.process_time()
            for _ in range(rounds):
                await run_through(chain, call, attempt)
            best = min(best, (time.process_time() - cpu) / rounds * 1e6)
    return best


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("redis-server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--stores", default="sqlite,redis")
    args = parser.parse_args()
    logging.getLogger("afterwork").setLevel(logging.ERROR)  # no loop-blocked warnings
    bare = asyncio.run(chain_cost("none"))
    for variant in VARIANTS[1:]:
        added = asyncio.run(chain_cost(variant)) - bare
        print(f"middleware CPU per attempt, {variant}: {added:.1f} us", flush=True)
    redis: subprocess.Popen[bytes] | None = None
    try:
        for store in args.stores.split(","):
            if store == "redis" and redis is None:
                redis, redis_url = start_redis()
            runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
            cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for _ in range(args.repeat):
                for variant in VARIANTS:
                    with tempfile.TemporaryDirectory() as tmp:
                        if store == "sqlite":
                            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
                        else:
                            url = f"{redis_url}?prefix=bench{uuid.uuid4().hex[:8]}"
                        rate, cpu = asyncio.run(
                            drain_once(url, args.jobs, args.concurrency, variant)
                        )
                        runs[variant].append(rate)
                        cpus[variant].append(cpu)
            best_cpu = min(cpus["none"])
            base_rate = statistics.median(runs["none"])
            base_cpu = statistics.median(cpus["none"])
            for variant in VARIANTS:
                rate, cpu = statistics.median(runs[variant]), statistics.median(cpus[variant])
                print(
                    f"{store:6} {variant:16} {rate:7,.0f} jobs/s"
                    f" (cost {(base_rate - rate) / base_rate * 100:5.1f} %)"
                    f" {[round(r) for r in runs[variant]]}"
                    f"  CPU {cpu:4.0f} us/job (cost {(cpu - base_cpu) / base_cpu * 100:5.1f} %)"
                    f" {[round(c) for c in cpus[variant]]}"
                    f"; best CPU {min(cpus[variant]):4.0f} us/job"
                    f" (cost {(min(cpus[variant]) - best_cpu) / best_cpu * 100:5.1f} %)",
                    flush=True,
                )
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(timeout=10)


if __name__ == "__main__":
    main()

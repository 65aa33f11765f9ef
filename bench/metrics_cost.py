"""What Prometheus metrics (``afterwork.metrics.Metrics``) cost a burst drain.

Usage::

    python bench/metrics_cost.py [--jobs 3000] [--repeat 5] [--stores sqlite,redis]

For each store, drains ``--jobs`` no-op jobs with one in-process worker
(``aw.drain(concurrency=...)``), without and with ``Metrics(aw)``, runs interleaved
(without, with, without, with, ...) on fresh stores; prints the median jobs/s of each and
the cost in percent, by wall clock and by this process's CPU time per job (the steadier
figure on a shared machine: other processes' load does not count in it). Redis runs on a
private ``redis-server`` (no persistence) started on a free port and stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from afterwork import Afterwork
from afterwork.metrics import Metrics


async def drain_once(url: str, jobs: int, concurrency: int, metrics: bool) -> tuple[float, float]:
    aw = Afterwork(url)

    @aw.task(name="noop")
    async def noop(n: int) -> int:
        return n

    if metrics:
        Metrics(aw)
    async with aw:
        for first in range(0, jobs, 100):
            built = [aw.build_job(noop, (n,), {}, {}) for n in range(first, first + 100)]
            await aw.enqueue_many(built)
        started, cpu = time.perf_counter(), time.process_time()
        ran = await aw.drain(concurrency=concurrency)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert ran == jobs, (ran, jobs)
    return jobs / elapsed, cpu / jobs * 1e6


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
    redis: subprocess.Popen[bytes] | None = None
    try:
        for store in args.stores.split(","):
            if store == "redis" and redis is None:
                redis, redis_url = start_redis()
            runs: dict[bool, list[float]] = {False: [], True: []}
            cpus: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeat):
                for metrics in (False, True):
                    with tempfile.TemporaryDirectory() as tmp:
                        if store == "sqlite":
                            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
                        else:
                            url = f"{redis_url}?prefix=bench{uuid.uuid4().hex[:8]}"
                        rate, cpu = asyncio.run(
                            drain_once(url, args.jobs, args.concurrency, metrics)
                        )
                        runs[metrics].append(rate)
                        cpus[metrics].append(cpu)
            without, with_metrics = (statistics.median(runs[m]) for m in (False, True))
            cpu_without, cpu_with = (statistics.median(cpus[m]) for m in (False, True))
            print(
                f"{store}: wall: without {without:,.0f} jobs/s {[round(r) for r in runs[False]]}"
                f", with metrics {with_metrics:,.0f} jobs/s {[round(r) for r in runs[True]]}"
                f", cost {(without - with_metrics) / without * 100:.1f} %\n"
                f"{store}: CPU per job: without {cpu_without:.0f} us"
                f" {[round(c) for c in cpus[False]]}, with metrics {cpu_with:.0f} us"
                f" {[round(c) for c in cpus[True]]}"
                f", cost {(cpu_with - cpu_without) / cpu_without * 100:.1f} %"
            )
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(timeout=10)


if __name__ == "__main__":
    main()

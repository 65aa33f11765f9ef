"""SQLite throughput: enqueue (one at a time, and in batches) and drain by one worker process.

Usage::

    .venv/bin/python bench/sqlite_bench.py [--jobs 5000] [--batch 100] [--repeat 3]

Each figure is the median of ``--repeat`` runs, each on a fresh database file in a
temporary directory (WAL, ``synchronous=NORMAL``, the defaults). "drain" runs no-op jobs
with ``aw.drain(concurrency=...)``: one worker in this process claiming in batches,
running, and recording each outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from afterwork import Afterwork


def build(path: Path) -> Afterwork:
    aw = Afterwork(f"sqlite:///{path}")

    @aw.task(name="noop")
    async def noop(n: int) -> int:
        return n

    return aw


async def enqueue_single(path: Path, jobs: int, batch: int, concurrency: int) -> float:
    aw = build(path)
    task = aw.tasks["noop"]
    async with aw:
        started = time.perf_counter()
        for n in range(jobs):
            await task.enqueue(n)
        return jobs / (time.perf_counter() - started)


async def enqueue_batch(path: Path, jobs: int, batch: int, concurrency: int) -> float:
    aw = build(path)
    task = aw.tasks["noop"]
    async with aw:
        started = time.perf_counter()
        for first in range(0, jobs, batch):
            built = [aw.build_job(task, (n,), {}, {}) for n in range(first, first + batch)]
            await aw.enqueue_many(built)
        return jobs / (time.perf_counter() - started)


async def drain(path: Path, jobs: int, batch: int, concurrency: int) -> float:
    aw = build(path)
    task = aw.tasks["noop"]
    async with aw:
        for first in range(0, jobs, batch):
            built = [aw.build_job(task, (n,), {}, {}) for n in range(first, first + batch)]
            await aw.enqueue_many(built)
        started = time.perf_counter()
        ran = await aw.drain(concurrency=concurrency)
        elapsed = time.perf_counter() - started
        assert ran == jobs, (ran, jobs)
        return jobs / elapsed


Scenario = Callable[[Path, int, int, int], Coroutine[Any, Any, float]]


def median_of(scenario: Scenario, args: argparse.Namespace) -> tuple[float, list[float]]:
    runs: list[float] = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.db"
            runs.append(asyncio.run(scenario(path, args.jobs, args.batch, args.concurrency)))
    return statistics.median(runs), runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# afterwork SQLite bench: Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {platform.machine()}, jobs={args.jobs}, "
        f"batch={args.batch}, concurrency={args.concurrency}, median of {args.repeat}"
    )
    scenarios: list[tuple[str, Scenario]] = [
        ("enqueue, one job per call", enqueue_single),
        (f"enqueue, batches of {args.batch}", enqueue_batch),
        (f"drain, one worker (concurrency {args.concurrency})", drain),
    ]
    print("| scenario | jobs/s (median) | runs |")
    print("|---|---:|---|")
    for label, scenario in scenarios:
        median, runs = median_of(scenario, args)
        shown = ", ".join(f"{r:,.0f}" for r in runs)
        print(f"| {label} | {median:,.0f} | {shown} |")


if __name__ == "__main__":
    main()

"""Process isolation's cost: isolated no-op jobs against in-process ones, one worker.

Usage::

    .venv/bin/python bench/isolation_bench.py [--jobs 2000] [--concurrency 4] [--repeat 3]

Each figure is the median of ``--repeat`` runs, each on a fresh SQLite file. A run starts
one worker, warms it (for the isolated task: every child of the pool is started and has
imported the task's module), then enqueues ``--jobs`` no-op jobs in batches and times
until the worker has finished them all. The pool is reused, never forked per job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def drain_rate(task_name: str, jobs: int, concurrency: int) -> float:
    from bench.isolation_app import aw

    task = aw.tasks[task_name]
    async with aw, aw.worker(concurrency=concurrency) as worker:

        async def run(count: int) -> float:
            target = worker.statistics().finished + count
            started = time.perf_counter()
            for first in range(0, count, 100):
                size = min(100, count - first)
                await aw.enqueue_many([aw.build_job(task, (n,), {}, {}) for n in range(size)])
            while worker.statistics().finished < target:  # noqa: ASYNC110 - polls a counter
                await asyncio.sleep(0.005)
            return count / (time.perf_counter() - started)

        await run(concurrency * 5)  # warm-up: the pool's children start here
        return await run(jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"noop": [], "noop_isolated": []}
    for _ in range(args.repeat):
        for name in rates:
            with tempfile.TemporaryDirectory() as tmp:
                os.environ["AFTERWORK_URL"] = f"sqlite:///{tmp}/bench.db"
                sys.modules.pop("bench.isolation_app", None)
                rates[name].append(asyncio.run(drain_rate(name, args.jobs, args.concurrency)))
    in_process = statistics.median(rates["noop"])
    isolated = statistics.median(rates["noop_isolated"])
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"in-process drain: {in_process:,.0f} jobs/s  runs {[round(r) for r in rates['noop']]}")
    print(
        f"isolated drain:   {isolated:,.0f} jobs/s  runs "
        f"{[round(r) for r in rates['noop_isolated']]}"
    )
    print(f"isolated / in-process: {isolated / in_process:.0%}")


if __name__ == "__main__":
    main()

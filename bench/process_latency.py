"""Worker start-up and enqueue-to-start latency between two processes on one SQLite file.

Usage::

    .venv/bin/python bench/process_latency.py [--jobs 300] [--spawns 5] [--store sqlite|URL]

* start-up: a job is enqueued, then ``afterwork worker app:aw`` is spawned; the figure is
  the job's ``finished_at`` minus the time just before the spawn (median of ``--spawns``);
* latency: with that worker running (idle between jobs), this process enqueues one job at
  a time, 20 ms apart, and waits for it; the figure is ``started_at - created_at``
  (p50 / p99 over ``--jobs``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from afterwork import Afterwork  # noqa: E402

APP = """
from afterwork import Afterwork

aw = Afterwork({url!r})

@aw.task(name="noop")
async def noop(n: int) -> None: ...
"""


def spawn(folder: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.Popen(
        [sys.executable, "-m", "afterwork", "worker", "app:aw"],
        cwd=folder,
        env=env,
        stderr=subprocess.DEVNULL,
    )


async def startup(url: str, folder: Path) -> float:
    async with Afterwork(url) as aw:

        @aw.task(name="noop")
        async def noop(n: int) -> None: ...

        job = await noop.enqueue(0)
        spawned = time.time()
        worker = spawn(folder)
        try:
            done = await aw.wait_for_job(job.id, timeout=60)
        finally:
            worker.terminate()
            worker.wait()
        assert done.finished_at is not None
        return done.finished_at - spawned


async def latency(url: str, folder: Path, jobs: int) -> list[float]:
    worker = spawn(folder)
    try:
        async with Afterwork(url) as aw:

            @aw.task(name="noop")
            async def noop(n: int) -> None: ...

            await aw.wait_for_job((await noop.enqueue(-1)).id, timeout=60)  # worker is up
            samples = []
            for n in range(jobs):
                await asyncio.sleep(0.02)
                done = await aw.wait_for_job((await noop.enqueue(n)).id, timeout=60)
                assert done.started_at is not None
                samples.append(done.started_at - done.created_at)
            return samples
    finally:
        worker.terminate()
        worker.wait()


async def main(jobs: int, spawns: int) -> None:
    print(f"load average {os.getloadavg()[0]:.2f}")
    starts = []
    for _ in range(spawns):
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            url = f"sqlite:///{folder / 'jobs.db'}"
            (folder / "app.py").write_text(APP.format(url=url))
            starts.append(await startup(url, folder))
    print(
        f"start-up (spawn -> first job done): median {statistics.median(starts):.3f} s "
        f"({', '.join(f'{s:.3f}' for s in starts)})"
    )
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        url = f"sqlite:///{folder / 'jobs.db'}"
        (folder / "app.py").write_text(APP.format(url=url))
        samples = await latency(url, folder, jobs)
    q = statistics.quantiles(samples, n=100)
    print(
        f"enqueue -> start in another process: p50 {statistics.median(samples) * 1000:.1f} ms, "
        f"p99 {q[98] * 1000:.1f} ms ({jobs} jobs)"
    )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--spawns", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.spawns))

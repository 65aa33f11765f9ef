"""``afterwork worker --processes 2`` against one process, on CPU-light jobs.

Usage::

    .venv/bin/python bench/processes_bench.py [--jobs 10000] [--url redis://...] [--repeat 1]

Without ``--url`` a private redis-server is started (the one the tests use). For each
process count, a fresh key prefix; the worker command starts, and once every process logged
"started", the jobs are enqueued in batches of 500 and the clock runs until the store counts
them all succeeded. Each job does a little CPU work (a sum over ``--work`` squares, default
2,000: about 0.1 ms) and returns.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

APP = """
import os

from afterwork import Afterwork

aw = Afterwork(poll_interval=0.1)
WORK = int(os.environ.get("BENCH_WORK", "2000"))


@aw.task(name="light")
def light(n: int) -> int:
    return sum(i * i for i in range(WORK)) + n
"""


def count_started(stream: object, processes: int) -> None:
    seen = 0
    for line in stream:  # type: ignore[attr-defined]
        if "afterwork.worker: worker" in line and " started (" in line:
            seen += 1
            if seen == processes:
                return
    raise RuntimeError("the worker command ended before its processes started")


async def enqueue_and_wait(url: str, jobs: int, project: Path) -> float:
    sys.path.insert(0, str(project))
    os.environ["AFTERWORK_URL"] = url
    sys.modules.pop("app", None)
    import app  # type: ignore[import-not-found]

    from afterwork import JobStatus

    aw = app.aw
    task = aw.tasks["light"]
    async with aw:
        started = time.perf_counter()
        for first in range(0, jobs, 500):
            size = min(500, jobs - first)
            await aw.enqueue_many([aw.build_job(task, (n,), {}, {}) for n in range(size)])
        while True:
            done = sum(s.counts.get(JobStatus.SUCCEEDED, 0) for s in await aw.stats())
            if done >= jobs:
                return jobs / (time.perf_counter() - started)
            await asyncio.sleep(0.05)


def measure(url: str, processes: int, jobs: int, project: Path) -> float:
    env = {
        **os.environ,
        "AFTERWORK_URL": url,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(project)]),
    }
    command = [sys.executable, "-m", "afterwork", "worker", "app:aw", "-c", "10"]
    command += ["--processes", str(processes), "--log-level", "INFO"]
    worker = subprocess.Popen(
        command, cwd=project, env=env, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        count_started(worker.stderr, processes)
        # Keep reading its log so that the pipe never fills up.
        assert worker.stderr is not None
        drain = subprocess.Popen(["cat"], stdin=worker.stderr, stdout=subprocess.DEVNULL)
        rate = asyncio.run(enqueue_and_wait(url, jobs, project))
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        drain.wait(10)
        return rate
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--url", default=None)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--work", type=int, default=2000, help="squares summed per job")
    args = parser.parse_args()
    os.environ["BENCH_WORK"] = str(args.work)
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "app.py").write_text(APP)
        url = args.url
        if url is None:
            sys.path.insert(0, str(ROOT))
            from tests.redis_server import RedisServer

            server = RedisServer(project / "redis")
            server.start()
            url = server.url
        try:
            rates: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.repeat):
                for processes in rates:
                    prefixed = f"{url}{'&' if '?' in url else '?'}prefix=b{uuid.uuid4().hex[:8]}"
                    if url.startswith("sqlite"):
                        prefixed = f"sqlite:///{project}/b{uuid.uuid4().hex[:8]}.db"
                    rates[processes].append(measure(prefixed, processes, args.jobs, project))
        finally:
            if server is not None:
                server.stop()
    one, two = max(rates[1]), max(rates[2])
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"1 process:   {one:,.0f} jobs/s  runs {[round(r) for r in rates[1]]}")
    print(f"2 processes: {two:,.0f} jobs/s  runs {[round(r) for r in rates[2]]}")
    print(f"2 / 1: {two / one:.2f}x")


if __name__ == "__main__":
    main()

"""The worker's CPU per drained job on Redis, PostgreSQL and SQLite, for one or more trees.

    PYTHONPATH=src .venv/bin/python bench/worker_cpu.py --trees /tmp/aw-base,. --runs 3
    PYTHONPATH=src .venv/bin/python bench/worker_cpu.py --inproc --profile --stores sqlite

Default mode: for each run, each store and each tree in turn (interleaved), enqueues
``--jobs`` no-ops to a fresh store (Redis ``FLUSHDB``, a new PostgreSQL database, a new
SQLite file), then starts one ``python -m afterwork worker bench.peers.afterwork_bench:aw``
process at its defaults (concurrency 10, prefetch 10) from that tree (``PYTHONPATH`` = the
tree and its ``src``) and reads its CPU (``utime + stime`` from ``/proc``) when its first
job is seen done and when its last one is: the difference over the jobs done in between is
the CPU per job (start-up left out). jobs/s runs from the first job's start to the last
job's end by the jobs' own clock. Prints the median of ``--runs`` per store and tree.

``--inproc`` instead drains in this process (``aw.drain(concurrency=10)``, this tree only),
reporting ``os.times()`` CPU per job; ``--profile`` wraps the drain in cProfile and prints
the functions by own time. Redis and PostgreSQL are private servers (tests/redis_server.py,
tests/pg_server.py) started here and stopped at the end; ``--stores memory`` also works
with ``--inproc``.

Environment: ``WORKER_ARGS`` adds arguments to the worker command (``--log-level WARNING``);
``SPLIT=1`` prints user and system CPU apart; ``SPY=/path/to/py-spy`` samples each worker
into ``spy-<database>.txt`` (raw, collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.peers.common import LineCount, lines, stop  # noqa: E402

SPLIT: list[tuple[int, int]] = [(0, 0)] if os.environ.get("SPLIT") else []
SPY = os.environ.get("SPY")  # a py-spy binary: sample each worker into spy-<store>.txt


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    if SPLIT:  # user and system CPU apart
        SPLIT.append((int(fields[11]), int(fields[12])))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stores:
    """Private servers, and a fresh store URL for each drain."""

    def __init__(self, folder: Path, names: list[str]) -> None:
        self.folder, self.names, self.n = folder, names, 0
        self.redis: Any = None
        self.pg: Any = None

    def start(self) -> None:
        if "redis" in self.names:
            from tests.redis_server import RedisServer

            self.redis = RedisServer(self.folder / "redis")
            self.redis.extra = ["--appendonly", "no"]
            self.redis.start()
        if "postgres" in self.names:
            from tests.pg_server import PostgresServer

            self.pg = PostgresServer(durable=True)
            self.pg.init()
            self.pg.start()

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.remove()

    async def fresh(self, store: str) -> str:
        self.n += 1
        if store == "redis":
            import redis.asyncio as aioredis

            client = aioredis.from_url(self.redis.url)
            await client.flushdb()
            await client.aclose()
            return str(self.redis.url)
        if store == "postgres":
            import asyncpg

            admin = await asyncpg.connect(self.pg.url)
            await admin.execute(f"CREATE DATABASE d{self.n}")
            await admin.close()
            return f"postgresql://postgres@127.0.0.1:{self.pg.port}/d{self.n}"
        if store == "memory":
            return "memory://"
        return f"sqlite:///{self.folder}/d{self.n}.db"


async def fill(url: str, jobs: int) -> Any:
    from afterwork import Afterwork

    aw = Afterwork(url)

    @aw.task(name="noop")
    async def noop() -> None:
        pass

    await aw.open()
    for first in range(0, jobs, 1000):
        batch = range(first, min(jobs, first + 1000))
        await aw.enqueue_many([aw.build_job(noop, (), {}, {}) for _ in batch])
    return aw


async def drain_process(tree: Path, url: str, jobs: int, folder: Path) -> tuple[float, float]:
    aw = await fill(url, jobs)
    await aw.aclose()
    out = folder / f"stamps-{time.monotonic_ns()}.txt"
    env = {
        **os.environ,
        "BENCH_REDIS_URL": url,
        "BENCH_OUT": str(out),
        "BENCH_CONCURRENCY": "",
        "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "src")]),
    }
    command = [sys.executable, "-m", "afterwork", "worker", "bench.peers.afterwork_bench:aw"]
    command += os.environ.get("WORKER_ARGS", "").split()
    with open(out.with_suffix(".log"), "wb") as log:  # noqa: ASYNC230
        proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before the measurement)
            command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    seen = LineCount(out)
    spy = None
    try:
        end = time.monotonic() + 600
        while seen.now() == 0:
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"no job done: see {out.with_suffix('.log')}")
            await asyncio.sleep(0.002)
        n0, c0 = seen.count, proc_cpu(proc.pid)
        if SPY:
            record = [SPY, "record", "-r", "400", "-f", "raw", "-o", str(folder / "spy.txt")]
            spy = subprocess.Popen([*record, "-p", str(proc.pid)], stdout=subprocess.DEVNULL)  # noqa: ASYNC220
        while seen.now() < jobs:
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"{seen.count} of {jobs}: see {out.with_suffix('.log')}")
            await asyncio.sleep(0.002)
        n1, c1 = seen.count, proc_cpu(proc.pid)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
            shutil.copy(folder / "spy.txt", f"spy-{Path(url).name or 'redis'}.txt")
        stop(proc)
    if SPLIT:
        (u0, s0), (u1, s1) = SPLIT[-2:]
        tick = (n1 - n0) / 1e6 * os.sysconf("SC_CLK_TCK")
        print(f"  user {(u1 - u0) / tick:.0f} µs/job, system {(s1 - s0) / tick:.0f} µs/job")
    rows = lines(out)
    span = max(e for _, e in rows) - min(s for s, _ in rows)
    return (c1 - c0) / (n1 - n0) * 1e6, len(rows) / span


async def drain_inproc(url: str, jobs: int, profile: bool) -> tuple[float, float]:
    aw = await fill(url, jobs)
    profiler = cProfile.Profile() if profile else None
    t0, c0 = time.perf_counter(), os.times()
    if profiler is not None:
        profiler.enable()
    ran = await aw.drain(concurrency=10)
    if profiler is not None:
        profiler.disable()
    c1, t1 = os.times(), time.perf_counter()
    await aw.aclose()
    assert ran == jobs, (ran, jobs)
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(
            int(os.environ.get("TOP", "35"))
        )
    return cpu / jobs * 1e6, jobs / (t1 - t0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stores", default="redis,postgres,sqlite")
    parser.add_argument("--trees", default=str(ROOT), help="comma-separated afterwork checkouts")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inproc", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    stores = args.stores.split(",")
    trees = [Path(t).resolve() for t in args.trees.split(",")]  # noqa: ASYNC240
    print(f"load before: {os.getloadavg()}")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        servers = Stores(folder, stores)
        servers.start()
        try:
            for run in range(args.runs):
                for store in stores:
                    for tree in [None] if args.inproc else trees:
                        url = await servers.fresh(store)
                        if tree is None:
                            figure = await drain_inproc(url, args.jobs, args.profile)
                        else:
                            figure = await drain_process(tree, url, args.jobs, folder)
                        key = (store, str(tree or "inproc"))
                        results.setdefault(key, []).append(figure)
                        print(f"run {run + 1} {store:8} {key[1]}: {figure[0]:.0f} µs/job,"
                              f" {figure[1]:,.0f} jobs/s", flush=True)  # fmt: skip
        finally:
            servers.stop()
    print(f"load after: {os.getloadavg()}")
    for (store, label), figures in results.items():
        cpu = statistics.median(f[0] for f in figures)
        rate = statistics.median(f[1] for f in figures)
        runs = ", ".join(f"{f[0]:.0f}" for f in figures)
        print(f"{store:8} {label}: CPU {cpu:.0f} µs/job ({runs}), {rate:,.0f} jobs/s")


if __name__ == "__main__":
    asyncio.run(main())

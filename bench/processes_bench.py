"""``afterwork worker --processes 2`` against one process, on CPU-light jobs.

Usage::

    .venv/bin/python bench/processes_bench.py [--store redis|sqlite|both] [--jobs 10000]
        [--repeat 3] [--work 2000] [--concurrency 10] [--url redis://...]

Without ``--url`` a private redis-server is started (the one the tests use: AOF with
``appendfsync always``); SQLite uses a fresh file per run. For each run the queue is
paused, the jobs are enqueued (batches of 1,000), the worker command starts and once every
process logged "started" the queue is resumed and the clock runs until the store counts
them all succeeded: a drain of pre-enqueued jobs, without the enqueuer or the interpreters'
start in the timing. Each job does a little CPU work (a sum over ``--work`` squares,
default 2,000: about 0.1 ms) and returns.

Each worker process also reports, from inside (a probe in the benchmark's app that wraps
the store's methods; nothing of it is in afterwork): its jobs, its CPU time during the
drain (``os.times``, threads included), its store calls per job by method and the mean
claim size, on Redis the round trips (``EVALSHA`` or plain commands) per job, on SQLite
the write transactions per job and how often one found the file locked and was retried.
The store's own CPU (redis-server's, from ``/proc``) is reported per job too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

APP = """
import os

from afterwork import Afterwork

aw = Afterwork(poll_interval=0.1)
WORK = int(os.environ.get("BENCH_WORK", "2000"))

if os.environ.get("BENCH_PROBE"):
    import bench_probe

    bench_probe.install()


@aw.task(name="light")
def light(n: int) -> int:
    return sum(i * i for i in range(WORK)) + n
"""

PROBE = '''
"""Counts a worker process's store calls and CPU; written as JSON when it exits."""
import atexit
import functools
import json
import os
import time
from collections import Counter

calls: Counter = Counter()
items: Counter = Counter()
seconds: Counter = Counter()  # wall time inside each kind of call, summed
state = {"cpu0": None, "t0": None, "cpu1": None, "t1": None, "finished": 0}


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def wrap(cls, name, size=None, trip=None):
    original = getattr(cls, name)

    @functools.wraps(original)
    async def wrapper(self, *args, **kwargs):
        key = trip or name
        calls[key] += 1
        began = time.perf_counter()
        result = await original(self, *args, **kwargs)
        seconds[key] += time.perf_counter() - began
        if name == "claim" and result and state["cpu0"] is None:
            state["cpu0"], state["t0"] = cpu(), time.monotonic()
        if size is not None:
            items[key] += size(args, result)
        if name == "finish":
            state["finished"] += 1
            state["cpu1"], state["t1"] = cpu(), time.monotonic()
        return result

    setattr(cls, name, wrapper)


def install() -> None:
    from afterwork.backends import _sqlite_db, redis, sqlite

    classes = [redis.RedisBackend, sqlite.SQLiteBackend]
    try:
        from afterwork.backends import postgres
    except ImportError:  # without the postgres extra
        pass
    else:
        classes.append(postgres.PostgresBackend)
    for cls in classes:
        wrap(cls, "claim", size=lambda a, r: len(r))
        wrap(cls, "begin", size=lambda a, r: len(a[0]))
        for name in ("finish", "heartbeat", "wait_for_work", "recover_expired"):
            wrap(cls, name)
    wrap(redis.RedisBackend, "_eval", trip="redis round trip (EVALSHA)")
    wrap(redis.RedisBackend, "_command", trip="redis round trip (command)")
    wrap(_sqlite_db.Database, "write", trip="sqlite write transaction")
    wrap(_sqlite_db.Database, "read", trip="sqlite read transaction")
    class Timed:
        """A connection that times how long BEGIN IMMEDIATE waits for the write lock and
        how long the lock is then held (until COMMIT or ROLLBACK)."""

        def __init__(self, conn):
            self._conn = conn
            self._locked = None

        def __getattr__(self, name):
            return getattr(self._conn, name)

        def execute(self, sql, *args):
            began = time.perf_counter()
            result = self._conn.execute(sql, *args)
            now = time.perf_counter()
            if sql == "BEGIN IMMEDIATE":
                seconds["sqlite lock wait"] += now - began
                calls["sqlite lock wait"] += 1
                self._locked = now
            elif sql in ("COMMIT", "ROLLBACK") and self._locked is not None:
                seconds["sqlite lock held"] += now - self._locked
                calls["sqlite lock held"] += 1
                self._locked = None
            return result

    original_connect = _sqlite_db.connect
    _sqlite_db.connect = lambda *a, **k: Timed(original_connect(*a, **k))
    dbs = []
    original_init = _sqlite_db.Database.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        dbs.append(self)

    _sqlite_db.Database.__init__ = init

    def dump() -> None:
        path = os.path.join(os.environ["BENCH_PROBE"], f"{os.getpid()}.json")
        with open(path, "w") as out:
            json.dump(
                {
                    "pid": os.getpid(),
                    "calls": calls,
                    "items": items,
                    "seconds": seconds,
                    "busy_retries": sum(db.busy_retries for db in dbs),
                    **state,
                },
                out,
            )

    atexit.register(dump)
'''


def count_started(stream: Any, processes: int) -> None:
    seen = 0
    for line in stream:
        if "afterwork.worker: worker" in line and " started (" in line:
            seen += 1
            if seen == processes:
                return
    raise RuntimeError("the worker command ended before its processes started")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its descendants, from /proc.

    Descendants count for a store that runs several processes (PostgreSQL's backends);
    redis-server is one process.
    """
    sys.path.insert(0, str(ROOT))
    from bench.peers.common import tree_cpu

    return tree_cpu(pid)


async def with_app(url: str, project: Path, body: Any) -> Any:
    os.environ["AFTERWORK_URL"] = url
    os.environ.pop("BENCH_PROBE", None)
    sys.modules.pop("app", None)
    import app  # type: ignore[import-not-found]

    async with app.aw:
        return await body(app.aw)


def enqueue_paused(url: str, jobs: int, project: Path) -> None:
    async def body(aw: Any) -> None:
        task = aw.tasks["light"]
        await aw.pause("default")
        for first in range(0, jobs, 1000):
            size = min(1000, jobs - first)
            await aw.enqueue_many([aw.build_job(task, (n,), {}, {}) for n in range(size)])

    asyncio.run(with_app(url, project, body))


POLLS = [0]  # aw.stats() calls made while waiting (each one a read of the store)


def resume_and_wait(url: str, jobs: int, project: Path) -> float:
    from afterwork import JobStatus

    async def body(aw: Any) -> float:
        started = time.perf_counter()
        await aw.resume("default")
        while True:
            POLLS[0] += 1
            done = sum(s.counts.get(JobStatus.SUCCEEDED, 0) for s in await aw.stats())
            if done >= jobs:
                return time.perf_counter() - started
            await asyncio.sleep(0.05)

    seconds: float = asyncio.run(with_app(url, project, body))
    return seconds


def measure(
    url: str,
    processes: int,
    args: argparse.Namespace,
    project: Path,
    server_pid: int | None,
    counters: Any = None,
) -> dict[str, Any]:
    """One drain; ``counters()``, if given, reads the store's own counters (a dict of
    numbers) before and after it: their differences are in ``store_counters``."""
    enqueue_paused(url, args.jobs, project)
    probe = Path(tempfile.mkdtemp(dir=project))
    env = {
        **os.environ,
        "AFTERWORK_URL": url,
        "BENCH_PROBE": str(probe),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(project)]),
    }
    command = [sys.executable, "-m", "afterwork", "worker", "app:aw", "-c", str(args.concurrency)]
    command += ["--processes", str(processes), "--log-level", "INFO"]
    worker = subprocess.Popen(
        command, cwd=project, env=env, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        count_started(worker.stderr, processes)
        # Keep reading its log so that the pipe never fills up.
        assert worker.stderr is not None
        drain = subprocess.Popen(["cat"], stdin=worker.stderr, stdout=subprocess.DEVNULL)
        load = os.getloadavg()[0]
        server0 = proc_cpu(server_pid) if server_pid else 0.0
        before = counters() if counters else {}
        POLLS[0] = 0
        seconds = resume_and_wait(url, args.jobs, project)
        server1 = proc_cpu(server_pid) if server_pid else 0.0
        after = counters() if counters else {}
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        drain.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    reports = [json.loads(p.read_text()) for p in sorted(probe.glob("*.json"))]
    return {
        "processes": processes,
        "seconds": seconds,
        "rate": args.jobs / seconds,
        "load": load,
        "server_cpu": server1 - server0,
        "store_counters": {k: after[k] - before[k] for k in after},
        "stats_polls": POLLS[0],
        "workers": reports,
    }


def describe(run: dict[str, Any], jobs: int) -> list[str]:
    lines = [
        f"  {run['processes']} process(es): {run['rate']:,.0f} jobs/s in {run['seconds']:.2f}s"
        f" (load before {run['load']:.2f})"
    ]
    if run["server_cpu"]:
        lines.append(
            f"    redis-server CPU {run['server_cpu']:.2f}s = "
            f"{1000 * run['server_cpu'] / jobs:.3f} ms/job,"
            f" {run['server_cpu'] / run['seconds']:.0%} of a core"
        )
    for w in run["workers"]:
        done = w["finished"] or 1
        busy = (w["cpu1"] or 0) - (w["cpu0"] or 0)
        wall = (w["t1"] or 0) - (w["t0"] or 0)
        share = busy / wall if wall > 0 else 0.0
        calls = {k: round(v / done, 3) for k, v in sorted(w["calls"].items())}
        claim = w["items"].get("claim", 0) / max(1, w["calls"].get("claim", 0))
        begin = w["items"].get("begin", 0) / max(1, w["calls"].get("begin", 0))
        lines.append(
            f"    pid {w['pid']}: {w['finished']} jobs, CPU {busy:.2f}s"
            f" = {1000 * busy / done:.3f} ms/job, {share:.0%} of a core while draining;"
            f" mean claim {claim:.1f} jobs, begin {begin:.1f}; sqlite busy retries"
            f" {w['busy_retries']}"
        )
        lines.append(f"      per job: {calls}")
        mean = {
            k: round(1000 * v / max(1, w["calls"].get(k, 0)), 3)
            for k, v in sorted(w["seconds"].items())
            if "round trip" in k or "sqlite" in k
        }
        lines.append(f"      mean ms per call: {mean}")
        if "sqlite lock held" in w["seconds"] and wall > 0:
            held = w["seconds"]["sqlite lock held"]
            waited = w["seconds"]["sqlite lock wait"]
            lines.append(
                f"      write lock held {held:.2f}s, waited for {waited:.2f}s"
                f" (of {run['seconds']:.2f}s)"
            )
    return lines


def summary(store: str, run: dict[str, Any], jobs: int) -> str:
    """One line per run: the figures docs/benchmarks.md tabulates."""
    ws = run["workers"]
    cpu = sum(w["cpu1"] - w["cpu0"] for w in ws)
    share = sum((w["cpu1"] - w["cpu0"]) / ((w["t1"] - w["t0"]) or 1) for w in ws)
    claims = sum(w["calls"].get("claim", 0) for w in ws)
    line = (
        f"{store} x{run['processes']}: {run['rate']:,.0f} jobs/s (load {run['load']:.1f});"
        f" worker CPU {1000 * cpu / jobs:.3f} ms/job, {share:.2f} cores;"
        f" claims/job {claims / jobs:.3f} (mean {jobs / max(1, claims):.1f} jobs)"
    )
    trips = sum(w["calls"].get("redis round trip (EVALSHA)", 0) for w in ws)
    if trips:
        rtt = sum(w["seconds"].get("redis round trip (EVALSHA)", 0) for w in ws) / trips
        line += (
            f"; scripts/job {trips / jobs:.3f}, round trip {1000 * rtt:.1f} ms;"
            f" redis-server {1000 * run['server_cpu'] / jobs:.3f} ms/job"
        )
    held = sum(w["seconds"].get("sqlite lock held", 0) for w in ws)
    if held:
        wait = sum(w["seconds"].get("sqlite lock wait", 0) for w in ws)
        line += (
            f"; write lock held {1000 * held / jobs:.3f} ms/job"
            f" ({held / run['seconds']:.0%} of the time), waited {wait:.1f}s in all"
        )
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--store", choices=["redis", "sqlite", "both"], default="both")
    parser.add_argument("--url", default=None, help="a Redis URL (default: a private server)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--work", type=int, default=2000, help="squares summed per job")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=None, help="also write every run here")
    args = parser.parse_args()
    os.environ["BENCH_WORK"] = str(args.work)
    stores = ["redis", "sqlite"] if args.store == "both" else [args.store]
    server = None
    results: dict[str, dict[int, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "app.py").write_text(APP)
        (project / "bench_probe.py").write_text(PROBE)
        sys.path.insert(0, str(project))
        url = args.url
        server_pid = None
        if "redis" in stores and url is None:
            sys.path.insert(0, str(ROOT))
            from tests.redis_server import RedisServer

            server = RedisServer(project / "redis")
            server.start()
            assert server.process is not None
            url, server_pid = server.url, server.process.pid
        try:
            for _ in range(args.repeat):
                for store in stores:
                    runs = results.setdefault(store, {p: [] for p in args.processes})
                    for processes in args.processes:
                        if store == "sqlite":
                            target = f"sqlite:///{project}/b{uuid.uuid4().hex[:8]}.db"
                        else:
                            assert url is not None
                            mark = "&" if "?" in url else "?"
                            target = f"{url}{mark}prefix=b{uuid.uuid4().hex[:8]}"
                        pid = server_pid if store == "redis" else None
                        runs[processes].append(measure(target, processes, args, project, pid))
                        print(f"{store}:", *describe(runs[processes][-1], args.jobs), sep="\n")
        finally:
            if server is not None:
                server.stop()
    report(results, args)


def report(results: dict[str, dict[int, list[dict[str, Any]]]], args: argparse.Namespace) -> None:
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    for store, runs in results.items():
        for processes in runs:
            for run in runs[processes]:
                print(summary(store, run, args.jobs))
    for store, runs in results.items():
        rates = {p: [round(r["rate"]) for r in rs] for p, rs in runs.items()}
        medians = {p: statistics.median(r) for p, r in rates.items()}
        for processes, values in rates.items():
            print(
                f"{store} {processes} process(es): median {medians[processes]:,.0f} jobs/s"
                f"  runs {values}"
            )
        one = medians.get(1)
        for processes in rates:
            if one and processes != 1:
                print(f"{store} {processes} / 1: {medians[processes] / one:.2f}x")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

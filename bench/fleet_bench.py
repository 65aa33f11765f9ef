"""A fleet curve: 1, 2, 4, 8 ``afterwork worker`` processes on one Redis, PostgreSQL, SQLite.

Usage::

    .venv/bin/python bench/fleet_bench.py [--stores redis,postgres,sqlite] [--processes 1 2 4 8]
        [--jobs 6000] [--repeat 1] [--work 0] [--concurrency 10] [--json out.json]

Each point is ``bench/processes_bench.py``'s drain (the queue paused, ``--jobs`` jobs
enqueued, ``afterwork worker --processes N`` started, the queue resumed once every process
logged "started", timed until the store counts them all succeeded), on a store of its own:
a private redis-server (``--save "" --appendonly no``, as ``bench/run_all.py`` runs it), a
fresh database on one private PostgreSQL (``PostgresServer(durable=True)``: fsync,
synchronous_commit and full_page_writes on), a fresh SQLite file (WAL,
``synchronous=NORMAL``). ``--work 0`` (the default here) makes each job a no-op, so the
curve measures what the store and the worker's own bookkeeping cost.

Reported per point: jobs/s, the workers' CPU per job and the cores they used, the store's
CPU per job and its share of a core (redis-server, or the postmaster and all its backends,
from ``/proc``), and the store operations per job: Redis script calls and commands (the
probe in ``processes_bench.py``), PostgreSQL transactions committed (``xact_commit`` of
``pg_stat_database``), SQLite write transactions. The capacity model in
``docs/capacity.md`` is built from these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import processes_bench as pb  # noqa: E402


def pg_counters(url: str) -> dict[str, float]:
    import asyncpg

    async def read() -> dict[str, float]:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            row = await conn.fetchrow(
                "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted"
                " FROM pg_stat_database WHERE datname = current_database()"
            )
        finally:
            await conn.close()
        assert row is not None
        return {key: float(row[key]) for key in row.keys()}

    return asyncio.run(read())


async def create_database(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def point(store: str, run: dict[str, Any], jobs: int) -> dict[str, Any]:
    """The figures of one drain, per job."""
    workers = run["workers"]
    cpu = sum(w["cpu1"] - w["cpu0"] for w in workers if w["cpu1"] is not None)
    calls: dict[str, float] = {}
    for w in workers:
        for key, value in w["calls"].items():
            calls[key] = calls.get(key, 0) + value
    out = {
        "store": store,
        "processes": run["processes"],
        "jobs_per_s": run["rate"],
        "seconds": run["seconds"],
        "load": run["load"],
        "worker_cpu_ms_per_job": 1000 * cpu / jobs,
        "worker_cores": cpu / run["seconds"],
        "store_cpu_ms_per_job": 1000 * run["server_cpu"] / jobs,
        "store_cores": run["server_cpu"] / run["seconds"],
        "claims_per_job": calls.get("claim", 0) / jobs,
        "stats_polls_per_job": run.get("stats_polls", 0) / jobs,  # the bench's own reads
    }
    if store == "redis":
        out["store_ops_per_job"] = (
            calls.get("redis round trip (EVALSHA)", 0) + calls.get("redis round trip (command)", 0)
        ) / jobs
    elif store == "sqlite":
        out["store_ops_per_job"] = calls.get("sqlite write transaction", 0) / jobs
        held = sum(w["seconds"].get("sqlite lock held", 0) for w in workers)
        out["sqlite_lock_ms_per_job"] = 1000 * held / jobs
        out["sqlite_lock_share"] = held / run["seconds"]
    else:
        counters = run.get("store_counters", {})
        out["store_ops_per_job"] = counters.get("xact_commit", 0) / jobs
        out["pg_rows_written_per_job"] = (
            sum(counters.get(k, 0) for k in ("tup_inserted", "tup_updated", "tup_deleted")) / jobs
        )
    return out


def line(p: dict[str, Any]) -> str:
    text = (
        f"{p['store']} x{p['processes']}: {p['jobs_per_s']:,.0f} jobs/s (load {p['load']:.1f});"
        f" workers {p['worker_cpu_ms_per_job']:.3f} ms CPU/job, {p['worker_cores']:.2f} cores;"
        f" store {p['store_cpu_ms_per_job']:.3f} ms CPU/job, {p['store_cores']:.2f} cores;"
        f" store ops/job {p['store_ops_per_job']:.3f}; claims/job {p['claims_per_job']:.3f}"
    )
    if "sqlite_lock_ms_per_job" in p:
        text += (
            f"; write lock {p['sqlite_lock_ms_per_job']:.3f} ms/job"
            f" ({p['sqlite_lock_share']:.0%} of the drain)"
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="redis,postgres,sqlite")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--work", type=int, default=0, help="squares summed per job")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "fleet.json")
    args = parser.parse_args()
    os.environ["BENCH_WORK"] = str(args.work)
    stores = args.stores.split(",")
    points: list[dict[str, Any]] = []
    print(f"load average before: {os.getloadavg()}", flush=True)
    from tests.pg_server import PostgresServer
    from tests.redis_server import RedisServer

    with tempfile.TemporaryDirectory(prefix="aw-fleet-") as tmp:
        project = Path(tmp)
        (project / "app.py").write_text(pb.APP)
        (project / "bench_probe.py").write_text(pb.PROBE)
        sys.path.insert(0, str(project))
        redis = pg = None
        try:
            if "redis" in stores:
                redis = RedisServer(project / "redis", extra=["--appendonly", "no"])
                redis.start()
            if "postgres" in stores:
                pg = PostgresServer(durable=True)
                pg.start()
            for _ in range(args.repeat):
                for processes in args.processes:  # interleaved: every store at N, then 2N
                    for store in stores:
                        counters = None
                        if store == "redis":
                            assert redis is not None and redis.process is not None
                            target = f"{redis.url}?prefix=f{uuid.uuid4().hex[:8]}"
                            pid: int | None = redis.process.pid
                        elif store == "postgres":
                            assert pg is not None and pg.process is not None
                            name = f"fleet_{uuid.uuid4().hex[:8]}"
                            asyncio.run(create_database(pg.url, name))
                            target = f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"
                            pid = pg.process.pid
                            counters = lambda url=target: pg_counters(url)  # noqa: E731
                        else:
                            target = f"sqlite:///{project}/f{uuid.uuid4().hex[:8]}.db"
                            pid = None
                        started = time.monotonic()
                        run = pb.measure(target, processes, args, project, pid, counters)
                        p = point(store, run, args.jobs)
                        p["wall_s"] = time.monotonic() - started
                        points.append(p)
                        print(line(p), flush=True)
        finally:
            if redis is not None:
                redis.stop()
            if pg is not None:
                pg.remove()
    print(f"load average after: {os.getloadavg()}")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    for store in stores:
        for processes in args.processes:
            rates = [
                p["jobs_per_s"]
                for p in points
                if (p["store"], p["processes"]) == (store, processes)
            ]
            if rates:
                print(
                    f"{store} x{processes}: median {statistics.median(rates):,.0f} jobs/s {rates}"
                )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(points, indent=1))


if __name__ == "__main__":
    main()

"""Where a PostgreSQL drain spends its time: statements, transactions and CPU per job.

    PYTHONPATH=src .venv/bin/python bench/pg_drain_profile.py [--jobs 10000] [--top 15]
    PYTHONPATH=src .venv/bin/python bench/pg_drain_profile.py --latency 300
    PYTHONPATH=src .venv/bin/python bench/pg_drain_profile.py --task sleepy --concurrency 100

The worker process runs in ``bench/.venv-pg`` (see bench/README.md), whose editable install
is this tree's afterwork. ``--spy PATH-TO-py-spy`` also samples the worker (``spy.txt``);
``--explain FILE`` keeps the plans of statements slower than 20 ms; ``--latency N`` instead
measures enqueue-to-start latency at 200 jobs/s, split at the enqueue call's return.

Starts one private durable ``postgres`` (as bench/pg_bench.py does) with
``pg_stat_statements`` loaded, enqueues ``--jobs`` no-ops, resets the statistics, lets one
``python -m afterwork worker`` process (bench/peers/pg_afterwork.py, default concurrency)
drain them, and prints: jobs/s (first start to last end), statements and commits per job
(every statement is one round trip from the worker, but for ``executemany``'s pipelined
rows), the worker's CPU seconds per job (``/proc/<pid>/stat``), and the statements by
calls. Statements of the driver process (enqueue, reading the statistics) are not counted:
the statistics are reset after the enqueue and read by a connection that asks for nothing
else.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pg_server import PostgresServer  # noqa: E402

PEERS_PYTHON = ROOT / "bench" / ".venv-pg" / "bin" / "python"

from bench.peers.common import spawn, stop, wait_lines  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=0)
    parser.add_argument("--task", default="noop", help="noop, or sleepy (a 50 ms sleep)")
    parser.add_argument(
        "--python", type=Path, default=PEERS_PYTHON, help="the worker's Python (its afterwork)"
    )
    parser.add_argument("--latency", type=int, default=0, help="instead: N jobs at 200/s")
    parser.add_argument("--explain", type=Path, help="copy slow statements' plans here")
    parser.add_argument("--spy", help="py-spy binary: sample the worker into <this>.txt")
    args = parser.parse_args()
    import asyncpg

    server = PostgresServer(durable=True)
    server.init()
    with open(server.data / "postgresql.conf", "a") as conf:  # noqa: ASYNC230
        conf.write("shared_preload_libraries = 'pg_stat_statements'\n")
        conf.write("pg_stat_statements.track_utility = on\n")
        if args.explain:  # the plans of statements slower than 20 ms, into the server's log
            conf.write("session_preload_libraries = 'auto_explain'\n")
            conf.write("auto_explain.log_min_duration = 20\nauto_explain.log_analyze = on\n")
    server.start()
    try:
        admin = await asyncpg.connect(server.url)
        await admin.execute("CREATE DATABASE drain")
        await admin.close()
        url = f"postgresql://postgres@127.0.0.1:{server.port}/drain"
        os.environ["BENCH_PG_URL"] = url
        from bench.peers import pg_afterwork

        peer = pg_afterwork.Peer()
        if args.latency:
            await latency(peer, url, args.latency)
            return
        await peer.open()
        for _ in range(max(1, args.jobs // 1000)):
            await peer.enqueue_batch(args.task, min(args.jobs, 1000))
        await peer.close()
        stats = await asyncpg.connect(url)
        await stats.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        commits0 = await stats.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = 'drain'"
        )
        await stats.execute("SELECT pg_stat_statements_reset()")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "drain.txt"
            command = peer.worker(args.concurrency or None)
            command[0] = str(args.python)  # by default afterwork from this tree (editable)
            proc = spawn(command, url, path, None)
            spy = None
            if args.spy:
                record = [args.spy, "record", "-r", "200", "-f", "raw", "-o", "spy.txt"]
                spy = subprocess.Popen(  # noqa: ASYNC220
                    [*record, "-p", str(proc.pid)], stdout=subprocess.DEVNULL
                )
            try:
                rows = await wait_lines(path, args.jobs, proc, 600)
                cpu = cpu_seconds(proc.pid)
            finally:
                stop(proc)
                if spy is not None:
                    spy.wait(30)
        start = min(s for s, _ in rows)
        span = max(e for _, e in rows) - start
        await asyncio.sleep(0.6)  # pg_stat_database is updated at most every 500 ms
        commits = await stats.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = 'drain'"
        )
        top = await stats.fetch(
            "SELECT calls, rows, total_exec_time, query FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'drain')"
            " AND query NOT LIKE '%pg_stat%' ORDER BY calls DESC"
        )
        await stats.close()
        calls = sum(r["calls"] for r in top)
        n = args.jobs
        print(f"load {os.getloadavg()[0]:.2f}; {n} jobs in {span:.2f} s: {n / span:,.0f} jobs/s")
        print(f"worker CPU (incl. start-up): {cpu:.2f} s, {cpu / n * 1e6:.0f} µs/job")
        print(f"statements: {calls} ({calls / n:.2f}/job); commits {commits - commits0}"
              f" ({(commits - commits0) / n:.3f}/job, incl. this reader's)")  # fmt: skip
        for r in top[: args.top]:
            query = " ".join(r["query"].split())[:150]
            print(f"{r['calls']:>8} {r['rows']:>8} {r['total_exec_time']:>9.0f}ms  {query}")
    finally:
        if args.explain:
            server.stop()
            shutil.copy(server.directory / "postgres.log", args.explain)
        server.remove()


async def latency(peer: Any, url: str, count: int) -> None:
    """Enqueue-to-start latency on an idle worker, split at the enqueue call's return."""
    await peer.open()
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "latency.txt"
            command = peer.worker(None)
            command[0] = str(PEERS_PYTHON)
            proc = spawn(command, url, path, None)
            try:
                await peer.enqueue("stamp", time.time())
                await wait_lines(path, 1, proc, 120)
                await asyncio.sleep(0.5)
                returned: dict[float, float] = {}
                for _ in range(count):
                    t0 = time.time()
                    await peer.enqueue("stamp", t0)
                    returned[t0] = time.time()
                    await asyncio.sleep(0.005)
                rows = await wait_lines(path, count + 1, proc, 120)
            finally:
                stop(proc)
    finally:
        await peer.close()
    total, call, wake = [], [], []
    stamps = [t0 for t0, _ in rows]
    if len(set(stamps)) != len(stamps):
        print(f"jobs that ran more than once: {len(stamps) - len(set(stamps))}")
    for t0, start in sorted(rows):
        if t0 not in returned:
            continue  # the first job (the worker is up)
        total.append((start - t0) * 1000)
        call.append((returned[t0] - t0) * 1000)
        wake.append((start - returned[t0]) * 1000)
    for name, values in (("total", total), ("enqueue call", call), ("after the call", wake)):
        cuts = statistics.quantiles(values, n=100)
        print(f"{name}: p50 {cuts[49]:.2f} ms, p99 {cuts[98]:.2f} ms, max {max(values):.2f} ms")
    print("slowest (total, call, after):")
    for t, c, w in sorted(zip(total, call, wake, strict=True))[-8:]:
        print(f"  {t:8.2f} {c:8.2f} {w:8.2f}")


if __name__ == "__main__":
    asyncio.run(main())

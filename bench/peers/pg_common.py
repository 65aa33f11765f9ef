"""The driver the PostgreSQL peer benchmarks share (bench/pg_bench.py runs one per system).

Each system gets its own database on the one private server. A peer module defines ``Peer``
(``setup``: install its schema; ``reset``: empty its tables; enqueue, bulk enqueue, the command
for one worker process) and the jobs of :mod:`bench.peers.common`, which record their own
start and end times to ``BENCH_OUT``. Scenarios: (a) enqueue one at a time, from 32
concurrent callers, in batches of 1,000; (b) drain pre-enqueued no-ops with one worker
process at its defaults; (c) 1,000 × 50 ms sleeps at concurrency 100; (d) enqueue-to-start
latency on an idle worker, one job every 5 ms (200 jobs/s). (b) and (c) run from the first
job's start to the last job's end by the jobs' own clock (worker start-up excluded).
``BENCH_SCENARIOS=enqueue,drain`` runs only those (of enqueue, drain, sleep, latency;
``batch`` is the batch part of (a) alone). For
(a), CPU per job is recorded too: this client process's, and the server's (the postmaster
and its children, read from /proc, when the server runs on this machine).

    bench/.venv-pg/bin/python -m bench.peers.pg_<system> postgresql://... [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.peers.common import BATCH, N_LATENCY, N_NOOP, N_SLEEP, spawn, stop, timed, wait_lines

N_CONCURRENT = 32


def pg_url() -> str:
    return os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:1/postgres")


async def truncate(schema: str, keep: tuple[str, ...] = ()) -> None:
    """Empty every table of ``schema`` but ``keep`` (one statement: no lock waits between)."""
    import asyncpg

    conn = await asyncpg.connect(pg_url())
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        names = [f'"{schema}"."{r["tablename"]}"' for r in rows if r["tablename"] not in keep]
        if names:
            await conn.execute(f"TRUNCATE {', '.join(names)}")
    finally:
        await conn.close()


async def prefill(peer: Any, kind: str, count: int) -> None:
    for _ in range(max(1, count // BATCH)):
        await peer.enqueue_batch(kind, min(count, BATCH))


async def span(peer: Any, path: Path, count: int, concurrency: int | None, timeout: float) -> float:
    proc = spawn(peer.worker(concurrency), pg_url(), path, concurrency)
    try:
        rows = await wait_lines(path, count, proc, timeout)
    finally:
        stop(proc)
    return max(end for _, end in rows) - min(start for start, _ in rows)


SCENARIOS = ("enqueue", "drain", "sleep", "latency")
BATCH_ONLY = "batch"  # the batches of (a) alone: quicker, for comparing batch enqueue


def scenarios() -> set[str]:
    """The scenarios to run (``BENCH_SCENARIOS``, comma-separated; all by default)."""
    chosen = os.environ.get("BENCH_SCENARIOS", "")
    letters = dict(zip("abcd", SCENARIOS, strict=True))  # (a) … (d) name them too
    return {letters.get(name, name) for name in chosen.split(",")} if chosen else set(SCENARIOS)


async def postmaster_pid() -> int | None:
    """The server's postmaster, when it runs on this machine and we may read its data dir."""
    import asyncpg

    conn = await asyncpg.connect(pg_url())
    try:
        folder = await conn.fetchval("SHOW data_directory")
    except Exception:
        return None
    finally:
        await conn.close()
    try:
        return int((Path(folder) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError, TypeError):
        return None


def _stat(pid: str | int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def server_cpu(postmaster: int | None) -> float:
    """CPU seconds used so far by the server: its processes, and those it reaped."""
    if postmaster is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = _stat(postmaster)  # fields[11:15]: utime, stime, cutime, cstime
        total = sum(int(v) for v in fields[11:15])
    except OSError:
        return 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat(entry)
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


class CpuMeter:
    """Client (this process) and server CPU microseconds per job of one scenario."""

    def __init__(self, postmaster: int | None) -> None:
        self.postmaster = postmaster
        self.client = time.process_time()
        self.server = server_cpu(postmaster)

    def record(self, out: dict[str, Any], name: str, jobs: int) -> None:
        out[f"{name}_client_cpu_us"] = (time.process_time() - self.client) / jobs * 1e6
        if self.postmaster is not None:
            out[f"{name}_server_cpu_us"] = (server_cpu(self.postmaster) - self.server) / jobs * 1e6


async def run(peer: Any, folder: Path, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    chosen = scenarios()
    postmaster = await postmaster_pid()
    await peer.setup()
    await peer.open()
    try:
        if "enqueue" in chosen:
            await enqueue_scenarios(peer, out, postmaster)
        elif BATCH_ONLY in chosen:
            await batch_scenario(peer, out, postmaster)
        if "drain" in chosen:
            await drain_scenario(peer, out, folder, timeout)
        if "sleep" in chosen:
            await sleep_scenario(peer, out, folder, timeout)
        if "latency" in chosen:
            await latency_scenario(peer, out, folder, timeout)
    finally:
        await peer.close()
    return out


async def enqueue_scenarios(peer: Any, out: dict[str, Any], postmaster: int | None) -> None:
    """(a) enqueue one at a time, from 32 concurrent callers, and in batches of 1,000."""
    await peer.reset()
    meter = CpuMeter(postmaster)
    out["enqueue_single_per_s"] = N_NOOP / await timed(N_NOOP, lambda: peer.enqueue("noop"))
    meter.record(out, "enqueue_single", N_NOOP)
    await peer.reset()

    async def caller() -> None:
        for _ in range(N_NOOP // N_CONCURRENT):
            await peer.enqueue("noop")

    meter = CpuMeter(postmaster)
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(N_CONCURRENT)))
    elapsed = time.perf_counter() - started
    out["enqueue_c32_per_s"] = N_NOOP // N_CONCURRENT * N_CONCURRENT / elapsed
    meter.record(out, "enqueue_c32", N_NOOP // N_CONCURRENT * N_CONCURRENT)
    await batch_scenario(peer, out, postmaster)


async def batch_scenario(peer: Any, out: dict[str, Any], postmaster: int | None) -> None:
    """(a) in batches of 1,000 (``N_NOOP`` jobs)."""
    await peer.reset()
    batches = max(1, N_NOOP // BATCH)
    meter = CpuMeter(postmaster)
    started = time.perf_counter()
    for _ in range(batches):
        await peer.enqueue_batch("noop", BATCH)
    out["enqueue_batch_per_s"] = BATCH * batches / (time.perf_counter() - started)
    meter.record(out, "enqueue_batch", BATCH * batches)


async def drain_scenario(peer: Any, out: dict[str, Any], folder: Path, timeout: float) -> None:
    """(b) drain pre-enqueued no-ops, one worker process at its defaults."""
    await peer.reset()
    await prefill(peer, "noop", N_NOOP)
    started = time.perf_counter()
    out["drain_per_s"] = N_NOOP / await span(peer, folder / "drain.txt", N_NOOP, None, timeout)
    out["drain_wall_per_s"] = N_NOOP / (time.perf_counter() - started)  # with start-up


async def sleep_scenario(peer: Any, out: dict[str, Any], folder: Path, timeout: float) -> None:
    """(c) sleeps at concurrency 100."""
    await peer.reset()
    await prefill(peer, "sleepy", N_SLEEP)
    out["sleep_c100_s"] = await span(peer, folder / "sleep.txt", N_SLEEP, 100, timeout)


async def latency_scenario(peer: Any, out: dict[str, Any], folder: Path, timeout: float) -> None:
    """(d) enqueue-to-start latency on an idle worker, 200 jobs/s."""
    await peer.reset()
    path = folder / "latency.txt"
    proc = spawn(peer.worker(None), pg_url(), path, None)
    try:
        await peer.enqueue("stamp", time.time())  # the worker is up once this one ran
        await wait_lines(path, 1, proc, 120)
        await asyncio.sleep(0.5)
        for _ in range(N_LATENCY):
            await peer.enqueue("stamp", time.time())
            await asyncio.sleep(0.005)
        rows = await wait_lines(path, N_LATENCY + 1, proc, timeout)
    finally:
        stop(proc)
    latencies = [(start - t0) * 1000 for t0, start in sorted(rows)[1:]]
    cuts = statistics.quantiles(latencies, n=100)
    out["latency_p50_ms"], out["latency_p99_ms"] = cuts[49], cuts[98]


def main(module: str) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--timeout", type=float, default=180, help="per scenario, seconds")
    args = parser.parse_args()
    os.environ["BENCH_PG_URL"] = args.url
    peer = importlib.import_module(module).Peer()
    folder = Path(tempfile.mkdtemp(prefix=f"aw-pgbench-{peer.name}-"))
    result = asyncio.run(run(peer, folder, args.timeout))
    report = {"peer": peer.name, "version": peer.version, "notes": peer.notes, **result}
    print(json.dumps(report), file=sys.stdout)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))

"""The driver every peer benchmark shares: the scenarios of ``bench/redis_bench.py``.

A peer module defines ``Peer`` (how to enqueue, how to start one worker process) and the
three jobs below wrapped as that peer's tasks. Every job appends one line to the file named
by ``BENCH_OUT`` (``first second``): ``start end`` for ``noop`` and ``sleepy``, ``t0 start``
for ``stamp(t0)``. So (b) and (c) run from the first job's start to the last job's end by
the jobs' own clock (worker start-up excluded, as for afterwork), and (d) is each job's start
minus the ``time.time()`` taken just before it was enqueued. Only stdlib and redis-py here,
which every peer environment has.

    python -m bench.peers.<peer>_bench redis://127.0.0.1:PORT/0 [--json out.json]
        [--scenarios enqueue,drain,sleep,latency,costs] [--worker-url redis://...]

``--worker-url`` points the worker processes elsewhere than the driver (through a delaying
``bench/proxy.py``: the distance scenario). ``--scenarios costs`` measures, at the socket,
the worker's Redis round trips and commands per drained job and its CPU per job: see
:func:`costs`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
# BENCH_SCALE=10 divides the job counts, for a quick check of a peer script only.
_SCALE = int(os.environ.get("BENCH_SCALE") or 1)
N_NOOP, N_SLEEP, N_LATENCY, BATCH = 10_000 // _SCALE, 1_000 // _SCALE, 300 // _SCALE, 1_000
N_CONCURRENT = 32  # callers of the concurrent enqueue scenario


def redis_url() -> str:
    """The private server's URL, in the driver and in the worker processes it spawns."""
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0")


def concurrency() -> int | None:
    """The concurrency a worker process was asked for; None for the peer's default."""
    return int(os.environ.get("BENCH_CONCURRENCY") or 0) or None


_out: tuple[int, int] | None = None  # (pid, fd)


def record(first: float, second: float) -> None:
    """Append one line to ``BENCH_OUT`` (one ``write`` with O_APPEND: atomic per line)."""
    global _out
    if _out is None or _out[0] != os.getpid():
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        _out = (os.getpid(), os.open(os.environ["BENCH_OUT"], flags, 0o644))
    os.write(_out[1], f"{first!r} {second!r}\n".encode())


def noop_job() -> None:
    now = time.time()
    record(now, now)


def sleepy_job() -> None:
    """For peers whose jobs are synchronous functions (run in threads or processes)."""
    started = time.time()
    time.sleep(0.05)
    record(started, time.time())


async def sleepy_job_async() -> None:
    started = time.time()
    await asyncio.sleep(0.05)
    record(started, time.time())


def stamp_job(t0: float) -> None:
    record(t0, time.time())


class Peer(Protocol):
    name: str
    version: str
    notes: list[str]

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def enqueue(self, kind: str, *args: float) -> None: ...
    async def enqueue_batch(self, kind: str, count: int) -> bool:
        """Enqueue ``count`` jobs with the peer's bulk API; False if it has none."""
        ...

    def worker(self, concurrency: int | None) -> list[str] | None:
        """The command for one worker process, or None if ``concurrency`` can't be set."""
        ...


def flushdb(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


_worker_url: str | None = None  # --worker-url: where worker processes connect instead


def spawn(
    command: list[str], url: str, out: Path, concurrency: int | None
) -> subprocess.Popen[bytes]:
    if _worker_url is not None:  # a command may name the URL (rq worker --url)
        command = [_worker_url if part == url else part for part in command]
        url = _worker_url
    env = {
        **os.environ,
        "BENCH_REDIS_URL": url,
        "BENCH_OUT": str(out),
        "BENCH_CONCURRENCY": str(concurrency or ""),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
    }
    log = open(out.with_suffix(".log"), "wb")
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's own process group (it may have children), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            os.killpg(proc.pid, signal.SIGKILL)  # children left behind by the parent
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def lines(path: Path) -> list[tuple[float, float]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        first, second = line.split()
        rows.append((float(first), float(second)))
    return rows


async def wait_lines(
    path: Path, count: int, proc: subprocess.Popen[bytes], timeout: float
) -> list[tuple[float, float]]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rows = lines(path)
        if len(rows) >= count:
            return rows
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited ({proc.returncode}): see {path.with_suffix('.log')}")
        await asyncio.sleep(0.02)
    raise TimeoutError(f"only {len(lines(path))} of {count} jobs finished in {timeout:.0f} s")


async def timed(count: int, step: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await step()
    return time.perf_counter() - started


async def prefill(peer: Peer, kind: str, count: int) -> None:
    for _ in range(count // BATCH or 1):
        if not await peer.enqueue_batch(kind, min(count, BATCH)):
            for _ in range(count):
                await peer.enqueue(kind)
            return


ALL = ("enqueue", "drain", "sleep", "latency")


async def run(
    peer: Peer, url: str, folder: Path, timeout: float, scenarios: Collection[str] = ALL
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await peer.open()
    try:
        if "costs" in scenarios:
            out.update(await costs(peer, url, folder, timeout))
        if "enqueue" in scenarios:
            await enqueues(peer, url, out)
        if "drain" in scenarios:
            await drain(peer, url, folder, timeout, out)
        if "sleep" in scenarios:
            await sleeps(peer, url, folder, timeout, out)
        if "latency" in scenarios:
            await latency(peer, url, folder, timeout, out)
    finally:
        await peer.close()
    return out


def _cpu() -> float:
    """This process's CPU seconds (the enqueueing client's: load-independent)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def enqueues(peer: Peer, url: str, out: dict[str, Any]) -> None:
    # (a) enqueue, one at a time, from 32 concurrent callers, and in batches of 1,000
    flushdb(url)
    cpu = _cpu()
    out["enqueue_single_per_s"] = N_NOOP / await timed(N_NOOP, lambda: peer.enqueue("noop"))
    out["enqueue_single_cpu_us"] = (_cpu() - cpu) / N_NOOP * 1e6
    flushdb(url)
    per_caller = N_NOOP // N_CONCURRENT

    async def caller() -> None:
        for _ in range(per_caller):
            await peer.enqueue("noop")

    cpu, started = _cpu(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(N_CONCURRENT)))
    elapsed = time.perf_counter() - started
    out["enqueue_c32_per_s"] = per_caller * N_CONCURRENT / elapsed
    out["enqueue_c32_cpu_us"] = (_cpu() - cpu) / (per_caller * N_CONCURRENT) * 1e6
    flushdb(url)
    started = time.perf_counter()
    batches = max(1, N_NOOP // BATCH)
    batched = all([await peer.enqueue_batch("noop", BATCH) for _ in range(batches)])
    elapsed = time.perf_counter() - started
    out["enqueue_batch_per_s"] = BATCH * batches / elapsed if batched else None


async def drain(peer: Peer, url: str, folder: Path, timeout: float, out: dict[str, Any]) -> None:
    # (b) drain pre-enqueued no-ops, one worker process at its defaults
    flushdb(url)
    count = getattr(peer, "drain_count", N_NOOP)  # fewer for a peer that needs > 2 min
    await prefill(peer, "noop", count)
    drained = await span(peer, url, folder / "drain.txt", count, None, timeout)
    out["drain_per_s"] = count / drained


async def sleeps(peer: Peer, url: str, folder: Path, timeout: float, out: dict[str, Any]) -> None:
    # (c) sleeps, default concurrency and 100
    for concurrency in (None, 100):
        key = f"sleep_c{concurrency or 'default'}_s"
        if peer.worker(concurrency) is None:
            out[key] = None
            continue
        flushdb(url)
        await prefill(peer, "sleepy", N_SLEEP)
        out[key] = await span(peer, url, folder / f"{key}.txt", N_SLEEP, concurrency, timeout)


async def latency(peer: Peer, url: str, folder: Path, timeout: float, out: dict[str, Any]) -> None:
    # (d) enqueue-to-start latency on an idle worker, 5 ms apart
    flushdb(url)
    path = folder / "latency.txt"
    command = peer.worker(None)
    assert command is not None
    proc = spawn(command, url, path, None)
    try:
        await peer.enqueue("stamp", time.time())  # the worker is up once this one ran
        await wait_lines(path, 1, proc, 120)
        for _ in range(N_LATENCY):
            await peer.enqueue("stamp", time.time())
            await asyncio.sleep(0.005)
        rows = await wait_lines(path, N_LATENCY + 1, proc, timeout)
    finally:
        stop(proc)
    latencies = [(start - t0) * 1000 for t0, start in sorted(rows)[1:]]
    cuts = statistics.quantiles(latencies, n=100)
    out["latency_p50_ms"], out["latency_p99_ms"] = cuts[49], cuts[98]


TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds of process ``root`` and its descendants, from ``/proc/<pid>/stat``.

    ``utime + stime`` of each live process of the tree, plus ``cutime + cstime`` (the
    children it has reaped: RQ's work-horse per job, a pool's replaced children).
    """
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid = int(entry)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(times.get(pid, 0) for pid in tree) / TICKS


class LineCount:
    """How many lines a job-stamp file has, reading only what was appended."""

    def __init__(self, path: Path) -> None:
        self.path, self.count, self._at = path, 0, 0

    def now(self) -> int:
        try:
            with open(self.path, "rb") as file:
                file.seek(self._at)
                data = file.read()
        except FileNotFoundError:
            return 0
        complete = data.rfind(b"\n") + 1
        self.count += data.count(b"\n", 0, complete)
        self._at += complete
        return self.count


def start_proxy(url: str, folder: Path, *extra: str) -> tuple[subprocess.Popen[str], str, Path]:
    """``bench/proxy.py`` in front of ``url``'s server: (its process, its URL, its stats)."""
    parts = urlsplit(url)
    stats = folder / f"proxy-{time.monotonic_ns()}.stats"
    command = [sys.executable, str(ROOT / "bench" / "proxy.py"), "--target-port", str(parts.port)]
    command += ["--stats", str(stats), "--names", str(stats.with_suffix(".names.json")), *extra]
    proxy = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proxy.stdout is not None
    port = int(proxy.stdout.readline().split()[1])
    host = f"{parts.username}@" if parts.username else ""
    proxied = urlunsplit(parts._replace(netloc=f"{host}127.0.0.1:{port}"))
    return proxy, proxied, stats


def read_stats(path: Path) -> dict[str, int]:
    from bench.proxy import read_stats as read

    return read(path)


async def costs(peer: Peer, url: str, folder: Path, timeout: float) -> dict[str, Any]:
    """Round trips, commands and CPU per job of one worker draining pre-enqueued no-ops.

    The jobs are enqueued straight to Redis; the worker process (at its defaults) connects
    through a counting ``bench/proxy.py``, so only its own traffic is counted. The figures
    run from the moment its first job is seen done (its start-up, imports and first claim
    excluded) to the moment the last is: the proxy's counters, the worker process tree's
    CPU and the count of jobs done are read at both moments, and each difference divided
    by the jobs done in between. ``startup_cpu_s`` is the tree's CPU up to the first read.
    """
    global _worker_url
    flushdb(url)
    count = getattr(peer, "drain_count", N_NOOP)
    await prefill(peer, "noop", count)
    proxy, proxied, stats = start_proxy(url, folder)
    path = folder / "costs.txt"
    command = peer.worker(None)
    assert command is not None
    saved, _worker_url = _worker_url, proxied
    try:
        proc = spawn(command, url, path, None)
    finally:
        _worker_url = saved
    seen = LineCount(path)
    try:
        end = time.monotonic() + timeout
        while seen.now() == 0:
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"no job done: see {path.with_suffix('.log')}")
            await asyncio.sleep(0.002)
        n0, s0, c0, t0 = seen.count, read_stats(stats), tree_cpu(proc.pid), time.monotonic()
        partial = False
        while seen.now() < count:
            if proc.poll() is not None:
                raise RuntimeError(f"{seen.count} of {count} done: see {path.with_suffix('.log')}")
            if time.monotonic() > end and seen.count - n0 >= 100:
                partial = True  # out of time: the figures are per job done so far
                break
            await asyncio.sleep(0.002)
        n1, s1, c1, t1 = seen.count, read_stats(stats), tree_cpu(proc.pid), time.monotonic()
    finally:
        stop(proc)
        proxy.terminate()
        proxy.wait(10)
    jobs = n1 - n0
    names_file = stats.with_suffix(".names.json")
    names = json.loads(names_file.read_text()) if names_file.exists() else {}
    return {
        "cost_jobs": jobs,
        "cost_partial": partial,
        "round_trips_per_job": (s1["round_trips"] - s0["round_trips"]) / jobs,
        "commands_per_job": (s1["commands"] - s0["commands"]) / jobs,
        "bytes_per_job": (s1["bytes_up"] + s1["bytes_down"] - s0["bytes_up"] - s0["bytes_down"])
        / jobs,
        "cpu_us_per_job": (c1 - c0) / jobs * 1e6,
        "cores_while_draining": (c1 - c0) / (t1 - t0),
        "proxied_drain_per_s": jobs / (t1 - t0),
        "startup_cpu_s": c0,
        "connections": s1["connections"],
        "command_names_whole_run": {k: v / count for k, v in list(names.items())[:8]},
    }


async def span(
    peer: Peer, url: str, path: Path, count: int, concurrency: int | None, timeout: float
) -> float:
    command = peer.worker(concurrency)
    assert command is not None
    proc = spawn(command, url, path, concurrency)
    try:
        rows = await wait_lines(path, count, proc, timeout)
    finally:
        stop(proc)
    return max(end for _, end in rows) - min(start for start, _ in rows)


def main(module: str) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--timeout", type=float, default=240, help="per scenario, seconds")
    parser.add_argument("--scenarios", default=",".join(ALL), help=f"of {ALL + ('costs',)}")
    parser.add_argument("--worker-url", help="where worker processes connect (default: url)")
    args = parser.parse_args()
    global _worker_url
    _worker_url = args.worker_url
    os.environ["BENCH_REDIS_URL"] = args.url
    peer: Peer = importlib.import_module(module).Peer()
    folder = Path(tempfile.mkdtemp(prefix=f"aw-bench-{peer.name}-"))
    scenarios = args.scenarios.split(",")
    result = asyncio.run(run(peer, args.url, folder, args.timeout, scenarios))
    report = {"peer": peer.name, "version": peer.version, "notes": peer.notes, **result}
    print(json.dumps(report), file=sys.stdout)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))

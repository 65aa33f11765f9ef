"""The Redis worker's flusher, traced: what each script call carries, how many are in flight.

    .venv/bin/python bench/redis_flush_trace.py TREE [--jobs 5000] [--prefetch N] [--delay-ms D]

Drains ``--jobs`` pre-enqueued no-ops in this process (``aw.drain(concurrency=10)``) from
``TREE`` (its ``src`` and the tree itself go first on ``sys.path``: run it once per tree to
compare two) against a private Redis without persistence, and wraps the store's ``_send``
(one flusher script call: its starts, finishes and claim) to count and time the calls.
Prints jobs/s, the worker's CPU per job (``os.times``), Redis's CPU per job (``INFO cpu``)
and the commands its scripts ran per job (``INFO commandstats``, reset before the drain),
the calls' shapes (starts, start writes, finishes, claim) and the share of the drain with
0, 1 and 2 or more calls in flight. ``--prefetch`` overrides the worker's prefetch (default:
the concurrency); ``--delay-ms`` puts ``bench/proxy.py`` between the worker and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

args = argparse.ArgumentParser(description=__doc__)
args.add_argument("tree", type=Path)
args.add_argument("--jobs", type=int, default=5000)
args.add_argument("--prefetch", type=int, default=None)
args.add_argument("--delay-ms", type=float, default=0.0)
options = args.parse_args()
TREE = options.tree.resolve()
sys.path[:0] = [str(TREE / "src"), str(TREE)]

import redis  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

from afterwork import Afterwork  # noqa: E402
from afterwork._engine import worker as engine  # noqa: E402
from afterwork.backends import _redis_worker_path as path  # noqa: E402
from bench.worker_cpu import fill  # noqa: E402

Call = tuple[int, int, int, bool, float, float]  # starts, start writes, finishes, claim, t0, t1
CALLS: list[Call] = []
send = path.WorkerPathMixin._send


async def traced(self: Any, batch: list[Any], ask: Any) -> Any:
    started = time.perf_counter()
    try:
        return await send(self, batch, ask)
    finally:
        begins = [w for w in batch if w.outcome is None]
        CALLS.append(
            (
                sum(len(w.leases) for w in begins),
                len(begins),
                len(batch) - len(begins),
                ask is not None,
                started,
                time.perf_counter(),
            )
        )


path.WorkerPathMixin._send = traced  # type: ignore[method-assign]
if options.prefetch is not None:
    init = engine.Worker.__init__

    def prefetching(self: engine.Worker, *a: Any, **k: Any) -> None:
        init(self, *a, **k)
        self.prefetch = options.prefetch
        self._claim_batch = max(1, (self.prefetch + 1) // 2)

    engine.Worker.__init__ = prefetching  # type: ignore[method-assign]


def in_flight() -> list[float]:
    """The share of the drain with 0, 1 and 2 or more calls in flight."""
    edges = sorted([(c[4], 1) for c in CALLS] + [(c[5], -1) for c in CALLS])
    spans, depth, last = [0.0, 0.0, 0.0], 0, edges[0][0]
    for at, step in edges:
        spans[min(depth, 2)] += at - last
        depth, last = depth + step, at
    return [span / sum(spans) for span in spans]


async def main() -> None:
    server = RedisServer(Path(tempfile.mkdtemp()), extra=["--appendonly", "no"])
    server.start()
    proxy: subprocess.Popen[str] | None = None
    try:
        jobs = options.jobs
        aw = await fill(server.url, jobs)
        if options.delay_ms:
            await aw.aclose()
            proxy = subprocess.Popen(  # noqa: ASYNC220 (before the drain, once)
                [sys.executable, str(TREE / "bench" / "proxy.py"), "--target-port",
                 str(server.port), "--delay-ms", str(options.delay_ms)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert proxy.stdout is not None
            port = proxy.stdout.readline().split()[1]
            aw = Afterwork(f"redis://127.0.0.1:{port}/0")

            @aw.task(name="noop")
            async def noop() -> None:
                pass

        admin = redis.Redis.from_url(server.url)

        def redis_cpu() -> float:
            info = admin.info("cpu")
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

        admin.config_resetstat()
        r0, w0, t0 = redis_cpu(), os.times(), time.perf_counter()
        ran = await aw.drain(concurrency=10)
        t1, w1, r1 = time.perf_counter(), os.times(), redis_cpu()
        await aw.aclose()
        stats = admin.info("commandstats")
        admin.close()
        worker = (w1.user - w0.user) + (w1.system - w0.system)
        rate, load = ran / (t1 - t0), os.getloadavg()[0]
        print(f"ran {ran} in {t1 - t0:.3f} s: {rate:,.0f} jobs/s; load {load:.2f}")
        cpu = worker / jobs * 1e6, (r1 - r0) / jobs * 1e6
        print("  worker CPU per job {:.0f} µs, Redis CPU per job {:.0f} µs".format(*cpu))
        inner = {k[8:]: int(v["calls"]) for k, v in stats.items() if "eval" not in k}
        top = sorted(inner.items(), key=lambda kv: -kv[1])[:10]
        print(
            f"  commands in scripts per job {sum(inner.values()) / jobs:.1f} ("
            + ", ".join(f"{name} {n / jobs:.1f}" for name, n in top)
            + ")"
        )
        claims = sum(c[3] for c in CALLS)
        print(
            f"  script calls {len(CALLS)} ({len(CALLS) / jobs:.2f} per job), with a claim {claims}"
        )
        zero, one, more = in_flight()
        print(f"  in flight: none {zero:.0%}, one {one:.0%}, two or more {more:.0%}")
        shapes = collections.Counter(c[:4] for c in CALLS)
        for (begins, writes, finishes, claim), n in shapes.most_common(6):
            shape = f"{begins} starts in {writes} writes, {finishes} finishes, claim {claim}"
            print(f"  {n:5} calls: {shape}")
    finally:
        server.stop()
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)


asyncio.run(main())

"""Store round trips and worker CPU seconds per drained job, on Redis.

Usage::

    .venv/bin/python bench/roundtrips.py [--jobs 5000] [--concurrency N]

A private redis-server (``--save "" --appendonly no``, as ``bench/run_all.py`` runs it)
sits behind a counting TCP proxy (in this process). One ``afterwork worker`` process
(``bench/redis_app.py``, default concurrency unless ``--concurrency``) connects through the
proxy; this process enqueues straight to Redis, so only the worker's traffic is counted.

* round trips: each time a connection sends the server data after it last received some
  (a pipeline, or a command and its reply, is one), summed over the worker's
  connections, from a warm worker (one job done) to the last of ``--jobs`` no-ops done,
  divided by ``--jobs``;
* CPU: the worker's ``utime + stime`` from ``/proc/<pid>/stat`` over the same span,
  divided by ``--jobs``.

Idle polls, heartbeats and presence writes during the drain count: they are part of the
cost. Every peer, and afterwork through the same driver, is measured the same way by
``bench/run_all.py --suite costs`` (``bench/peers/common.py``'s ``costs`` scenario).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402

from afterwork import Afterwork  # noqa: E402
from bench.proxy import ROUND_TRIPS, Proxy  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def measure(jobs: int, concurrency: int | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder), extra=["--appendonly", "no"])
        server.start()
        proxy = Proxy(server.port)  # bench/proxy.py: what it counts is said there
        await proxy.start()
        command = [sys.executable, "-m", "afterwork", "worker", "bench.redis_app:aw"]
        if concurrency:
            command += ["--concurrency", str(concurrency)]
        env = {
            **os.environ,
            "AFTERWORK_URL": f"redis://127.0.0.1:{proxy.port}/0",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        }
        worker = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
        try:
            async with Afterwork(server.url) as aw:
                noop = aw.task(name="noop")(_noop)  # as bench/redis_app.py names it
                await aw.wait_for_job((await noop.enqueue()).id, timeout=120)  # warm worker
                trips0, cpu0, t0 = (
                    proxy.counts[ROUND_TRIPS],
                    cpu_seconds(worker.pid),
                    time.monotonic(),
                )
                new = [aw.build_job(noop, (), {}, {}) for _ in range(jobs)]
                for at in range(0, jobs, 1000):
                    await aw.enqueue_many(new[at : at + 1000])
                await aw.wait_for_job(new[-1].id, timeout=600)
                await aw.join(timeout=600)
                trips, cpu = proxy.counts[ROUND_TRIPS] - trips0, cpu_seconds(worker.pid) - cpu0
                elapsed = time.monotonic() - t0
        finally:
            worker.terminate()
            worker.wait(30)
            await proxy.stop()
            server.stop()
    print(
        f"afterwork (concurrency {concurrency or 'default'}): {jobs} jobs in {elapsed:.2f} s; "
        f"{trips / jobs:.3f} round trips per job, {cpu / jobs * 1e6:.0f} us worker CPU per job"
    )


async def _noop() -> None: ...


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=0)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    asyncio.run(measure(args.jobs, args.concurrency or None))
    print(f"load average {os.getloadavg()[0]:.2f}")

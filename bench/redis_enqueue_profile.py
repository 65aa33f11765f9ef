"""Client CPU and round trips per ``task.enqueue(...)`` on Redis (issue 18).

    PYTHONPATH=src .venv/bin/python bench/redis_enqueue_profile.py [--jobs 3000] [--profile]

Starts a private redis-server (AOF, ``appendfsync always``, as the tests run it) behind
``bench/proxy.py``; enqueues ``--jobs`` no-op jobs one at a time, then the same number from
``--concurrency`` concurrent callers; prints, for each, jobs/s, this process's CPU per
enqueue (``resource.getrusage``: load-independent) and round trips / commands per enqueue
(counted by the proxy). ``--profile`` prints the top of a cProfile of the one-at-a-time run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402

from afterwork import Afterwork  # noqa: E402
from bench.proxy import read_stats  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def user() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


async def measure(url: str, stats: Path, jobs: int, concurrency: int, profile: bool) -> None:
    aw = Afterwork(f"{url}?prefix=afterwork:prof:{time.monotonic_ns()}")

    @aw.task(name="noop")
    async def noop(n: int) -> None:
        return None

    async with aw:
        for i in range(200):  # warm up: scripts loaded, connections open
            await noop.enqueue(i)

        async def serial() -> None:
            for i in range(jobs):
                await noop.enqueue(i)

        async def concurrent() -> None:
            per = jobs // concurrency

            async def one() -> None:
                for i in range(per):
                    await noop.enqueue(i)

            await asyncio.gather(*(one() for _ in range(concurrency)))

        for name, run in (("one at a time", serial), (f"{concurrency} concurrent", concurrent)):
            before = read_stats(stats)
            c0, u0, t0 = cpu(), user(), time.perf_counter()
            prof = cProfile.Profile() if profile and run is serial else None
            if prof:
                prof.enable()
            await run()
            if prof:
                prof.disable()
            wall, used, in_user = time.perf_counter() - t0, cpu() - c0, user() - u0
            after = read_stats(stats)
            trips = after["round_trips"] - before["round_trips"]
            commands = after["commands"] - before["commands"]
            print(
                f"{name:>16}: {jobs / wall:8.0f} jobs/s  CPU {used / jobs * 1e6:6.1f} µs/enqueue"
                f" (user {in_user / jobs * 1e6:5.1f})"
                f"  round trips {trips / jobs:.3f}/enqueue  commands {commands / jobs:.3f}/enqueue"
                + ("  (profiled)" if prof else "")
            )
            if prof:
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--profile", action="store_true")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        stats = Path(tmp) / "stats"
        proxy = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "proxy.py"),
                "--target-port",
                str(server.port),
                "--stats",
                str(stats),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proxy.stdout is not None
            port = int(proxy.stdout.readline().split()[1])
            asyncio.run(
                measure(f"redis://127.0.0.1:{port}/0", stats, ns.jobs, ns.concurrency, ns.profile)
            )
        finally:
            proxy.terminate()
            proxy.wait(10)
            server.stop()


if __name__ == "__main__":
    main()

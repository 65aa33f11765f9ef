"""afterwork through the peers' driver (``common.py``), for the measurements made at the socket.

    .venv/bin/python -m bench.peers.afterwork_bench redis://127.0.0.1:PORT/0 --scenarios costs

``bench/redis_bench.py`` stays the afterwork column of ``bench/run_all.py``'s scenarios (it
reads the store's own timestamps); this module lets the round-trip, CPU and distance
measurements (``--scenarios costs``, ``--worker-url``) treat afterwork exactly as they treat
each peer: the same job bodies writing the same stamp lines, one ``afterwork worker``
process at its defaults (concurrency 10, prefetch 10).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from afterwork import Afterwork
from bench.peers import common

aw = Afterwork(common.redis_url())


@aw.task(name="noop")
async def noop() -> None:
    common.noop_job()


@aw.task(name="sleepy")
async def sleepy() -> None:
    await common.sleepy_job_async()


@aw.task(name="stamp")
async def stamp(t0: float) -> None:
    common.stamp_job(t0)


TASKS = {"noop": noop, "sleepy": sleepy, "stamp": stamp}


class Peer:
    name = "afterwork"
    version = f"{version('afterwork')} (redis-py {version('redis')})"
    notes = ["default concurrency 10, prefetch 10; leases, fencing, results, events"]

    async def open(self) -> None:
        await aw.open()

    async def close(self) -> None:
        await aw.aclose()

    async def enqueue(self, kind: str, *args: float) -> None:
        await TASKS[kind].enqueue(*args)

    async def enqueue_batch(self, kind: str, count: int) -> bool:
        await aw.enqueue_many([aw.build_job(TASKS[kind], (), {}, {}) for _ in range(count)])
        return True

    def worker(self, concurrency: int | None) -> list[str]:
        command = [sys.executable, "-m", "afterwork", "worker", "bench.peers.afterwork_bench:aw"]
        if concurrency:
            command += ["--concurrency", str(concurrency)]
        return command


if __name__ == "__main__":
    common.main("bench.peers.afterwork_bench")

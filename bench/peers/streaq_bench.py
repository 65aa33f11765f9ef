"""streaq on a private Redis (see common.py).

    bench/.venv/bin/python -m bench.peers.streaq_bench redis://127.0.0.1:PORT/0

Batch enqueue is ``Worker.enqueue_many`` (one pipeline). One worker process
(``streaq run``) at streaq's default ``concurrency=16``; ``concurrency=100`` for (c).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from streaq import Worker

from bench.peers import common

_options: dict[str, Any] = {}
if common.concurrency():
    _options["concurrency"] = common.concurrency()
worker = Worker(redis_url=common.redis_url(), **_options)


@worker.task()
async def noop() -> None:
    common.noop_job()


@worker.task()
async def sleepy() -> None:
    await common.sleepy_job_async()


@worker.task()
async def stamp(t0: float) -> None:
    common.stamp_job(t0)


TASKS: dict[str, Any] = {"noop": noop, "sleepy": sleepy, "stamp": stamp}


class Peer:
    name = "streaq"
    version = f"{version('streaq')} (coredis {version('coredis')})"
    notes: list[str] = []

    async def open(self) -> None:
        await worker.__aenter__()

    async def close(self) -> None:
        await worker.__aexit__(None, None, None)

    async def enqueue(self, kind: str, *args: float) -> None:
        await TASKS[kind].enqueue(*args)

    async def enqueue_batch(self, kind: str, count: int) -> bool:
        await worker.enqueue_many([TASKS[kind].enqueue() for _ in range(count)])
        return True

    def worker(self, concurrency: int | None) -> list[str]:
        cli = str(Path(sys.executable).with_name("streaq"))
        return [cli, "run", "bench.peers.streaq_bench:worker"]


if __name__ == "__main__":
    common.main("bench.peers.streaq_bench")

"""Taskiq with taskiq-redis's ListQueueBroker on a private Redis (see common.py).

    bench/.venv/bin/python -m bench.peers.taskiq_bench redis://127.0.0.1:PORT/0

ListQueueBroker is taskiq-redis's plain list broker (no acknowledgements, no result
backend): its fastest. No bulk enqueue API (batch: n/a). One worker process
(``--workers 1``; the CLI's default is 2) at the default ``--max-async-tasks 100``, so the
default-concurrency and concurrency-100 runs of (c) are the same setting.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

from taskiq_redis import ListQueueBroker

from bench.peers import common

broker = ListQueueBroker(common.redis_url())


@broker.task(task_name="noop")
async def noop() -> None:
    common.noop_job()


@broker.task(task_name="sleepy")
async def sleepy() -> None:
    await common.sleepy_job_async()


@broker.task(task_name="stamp")
async def stamp(t0: float) -> None:
    common.stamp_job(t0)


TASKS = {"noop": noop, "sleepy": sleepy, "stamp": stamp}


class Peer:
    name = "Taskiq"
    version = f"{version('taskiq')} + taskiq-redis {version('taskiq-redis')} (ListQueueBroker)"
    notes = ["no bulk enqueue API", "default max-async-tasks is 100"]

    async def open(self) -> None:
        await broker.startup()

    async def close(self) -> None:
        await broker.shutdown()

    async def enqueue(self, kind: str, *args: float) -> None:
        await TASKS[kind].kiq(*args)

    async def enqueue_batch(self, kind: str, count: int) -> bool:
        return False

    def worker(self, concurrency: int | None) -> list[str]:
        command = [str(Path(sys.executable).with_name("taskiq")), "worker"]
        command += ["bench.peers.taskiq_bench:broker", "--workers", "1"]
        if concurrency:
            command += ["--max-async-tasks", str(concurrency)]
        return command


if __name__ == "__main__":
    common.main("bench.peers.taskiq_bench")

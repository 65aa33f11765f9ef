"""afterwork on the private PostgreSQL: the scenarios of bench/peers/pg_common.py.

    bench/.venv-pg/bin/python -m bench.peers.pg_afterwork postgresql://... --json out.json

Worker: ``python -m afterwork worker bench.peers.pg_afterwork:aw`` (default concurrency;
``--concurrency 100`` for (c)). Bulk enqueue: ``Afterwork.enqueue_many``.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

from afterwork import Afterwork, Task
from bench.peers import common, pg_common

aw = Afterwork(pg_common.pg_url())


@aw.task(name="noop")
async def noop() -> None:
    common.noop_job()


@aw.task(name="sleepy")
async def sleepy() -> None:
    await common.sleepy_job_async()


@aw.task(name="stamp")
async def stamp(t0: float) -> None:
    common.stamp_job(t0)


TASKS: dict[str, Task[Any, Any]] = {"noop": noop, "sleepy": sleepy, "stamp": stamp}


class Peer:
    name = "afterwork"
    version = f"{version('afterwork')} (asyncpg {version('asyncpg')})"
    notes = ["leases, fencing and stored results kept"]

    async def setup(self) -> None:
        pass  # the schema is created on open

    async def reset(self) -> None:
        await pg_common.truncate("afterwork", keep=("meta",))

    async def open(self) -> None:
        await aw.__aenter__()

    async def close(self) -> None:
        await aw.__aexit__(None, None, None)

    async def enqueue(self, kind: str, *args: float) -> None:
        await TASKS[kind].enqueue(*args)

    async def enqueue_batch(self, kind: str, count: int) -> bool:
        task = TASKS[kind]
        await aw.enqueue_many([aw.build_job(task, (), {}, {}) for _ in range(count)])
        return True

    def worker(self, concurrency: int | None) -> list[str]:
        command = [sys.executable, "-m", "afterwork", "worker", "bench.peers.pg_afterwork:aw"]
        command += ["--log-level", "WARNING"]
        return command + (["--concurrency", str(concurrency)] if concurrency else [])


if __name__ == "__main__":
    pg_common.main("bench.peers.pg_afterwork")

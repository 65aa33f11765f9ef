"""Procrastinate on the private PostgreSQL: the scenarios of bench/peers/pg_common.py.

    bench/.venv-pg/bin/python -m bench.peers.pg_procrastinate postgresql://... --json out.json

Worker: ``procrastinate --app=bench.peers.pg_procrastinate.app worker`` at its defaults
(concurrency 1, LISTEN/NOTIFY on); ``--concurrency 100`` for (c). Bulk enqueue:
``Task.batch_defer_async``; schema by ``schema_manager.apply_schema_async``.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import procrastinate

from bench.peers import common, pg_common

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=pg_common.pg_url()))


@app.task(name="noop")
async def noop() -> None:
    common.noop_job()


@app.task(name="sleepy")
async def sleepy() -> None:
    await common.sleepy_job_async()


@app.task(name="stamp")
async def stamp(t0: float) -> None:
    common.stamp_job(t0)


TASKS = {"noop": noop, "sleepy": sleepy, "stamp": stamp}


class Peer:
    name = "Procrastinate"
    version = f"{version('procrastinate')} (psycopg {version('psycopg')})"
    notes = ["default worker concurrency 1", "finished jobs kept (status succeeded)"]

    async def setup(self) -> None:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    async def reset(self) -> None:
        await pg_common.truncate("public")

    async def open(self) -> None:
        await app.open_async()

    async def close(self) -> None:
        await app.close_async()

    async def enqueue(self, kind: str, *args: float) -> None:
        if args:
            await TASKS[kind].defer_async(t0=args[0])
        else:
            await TASKS[kind].defer_async()

    async def enqueue_batch(self, kind: str, count: int) -> bool:
        await TASKS[kind].batch_defer_async(*({} for _ in range(count)))
        return True

    def worker(self, concurrency: int | None) -> list[str]:
        command = [str(Path(sys.executable).with_name("procrastinate"))]
        command += ["--app=bench.peers.pg_procrastinate.app", "worker"]
        return command + (["--concurrency", str(concurrency)] if concurrency else [])


if __name__ == "__main__":
    pg_common.main("bench.peers.pg_procrastinate")

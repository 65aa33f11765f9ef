"""PgQueuer on the private PostgreSQL: the scenarios of bench/peers/pg_common.py.

    bench/.venv-pg/bin/python -m bench.peers.pg_pgqueuer postgresql://... --json out.json

Worker: ``pgqueuer.run(create)``, the documented programmatic form of ``pgq run`` at its
defaults (``batch_size=10``), ``max_concurrent_tasks=100`` for (c). The CLI itself
(``pgq run``, pgqueuer 1.6.0 under this environment's typer) exits at start-up with
``AttributeError: 'str' object has no attribute 'name'`` in ``setup_fancy_logger``.
Enqueue through ``Queries.enqueue`` on an
``AsyncpgPoolDriver`` (lists of entrypoints for the bulk form); schema by ``Queries.install``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import asyncpg
import pgqueuer
from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, PgQueuer
from pgqueuer.models import Job
from pgqueuer.queries import Queries

from bench.peers import common, pg_common


@asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    conn = await asyncpg.connect(pg_common.pg_url())
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        common.noop_job()

    @pgq.entrypoint("sleepy")
    async def sleepy(job: Job) -> None:
        await common.sleepy_job_async()

    @pgq.entrypoint("stamp")
    async def stamp(job: Job) -> None:
        assert job.payload is not None
        common.stamp_job(float(job.payload.decode()))

    try:
        yield pgq
    finally:
        await conn.close()


class Peer:
    name = "PgQueuer"
    version = f"{version('pgqueuer')} (asyncpg {version('asyncpg')})"
    notes = ["finished jobs deleted (moved to a log table), no stored results"]

    async def setup(self) -> None:
        conn = await asyncpg.connect(pg_common.pg_url())
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()

    async def reset(self) -> None:
        await pg_common.truncate("public")

    async def open(self) -> None:
        self.pool = await asyncpg.create_pool(pg_common.pg_url(), min_size=2, max_size=32)
        self.queries = Queries(AsyncpgPoolDriver(self.pool))

    async def close(self) -> None:
        await self.pool.close()

    async def enqueue(self, kind: str, *args: float) -> None:
        payload = repr(args[0]).encode() if args else None
        await self.queries.enqueue(kind, payload)

    async def enqueue_batch(self, kind: str, count: int) -> bool:
        await self.queries.enqueue([kind] * count, [None] * count, [0] * count)
        return True

    def worker(self, concurrency: int | None) -> list[str]:
        return [sys.executable, "-m", "bench.peers.pg_pgqueuer", "--worker"]


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        asyncio.run(pgqueuer.run(create, max_concurrent_tasks=common.concurrency()))
    else:
        pg_common.main("bench.peers.pg_pgqueuer")

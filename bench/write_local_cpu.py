"""Client CPU per plain callable's job record written behind: ``write_local`` vs generic.

Usage::

    .venv/bin/python bench/write_local_cpu.py [--stores sqlite,redis,postgres] [--groups 1,5,20]

For each store (a private Redis with ``appendfsync always`` and a private PostgreSQL, as
the tests start them), groups of finished records are written by the store's
``write_local`` (one transaction, script call or statement per group) and by the
write-behind's generic path (``start`` then ``finish`` per record, as on a store without
it). Prints this process's CPU per record (the servers' own CPU apart), which the load of
the machine moves far less than the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from afterwork import Afterwork
from afterwork import _lifecycle as life
from afterwork._engine.writebehind import LocalRecord, WriteBehind, WritesBehind
from afterwork.backends.base import NewJob, Outcome


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _record(now: float) -> LocalRecord:
    new = NewJob(
        id=uuid.uuid4().hex, task="bench:plain_fn", queue="inline", args=["'u1'"], max_attempts=0
    )
    job = life.start_now(new, worker="web", now=now, lease_ttl=30.0).job
    return LocalRecord(
        new,
        "web",
        uuid.uuid4().hex,
        30.0,
        now,
        job,
        outcome=Outcome.succeeded(None),
        finished_at=now + 0.0001,
    )


async def measure(store: str, url: str, records: int, group: int) -> None:
    aw = Afterwork(url)
    async with aw:
        backend = aw.backend
        assert isinstance(backend, WritesBehind)
        behind = WriteBehind(types.SimpleNamespace(backend=backend), "web")
        ways: dict[str, Callable[[Sequence[LocalRecord]], Awaitable[None]]] = {
            "generic": behind._write_generic,
            "write_local": backend.write_local,
        }
        for way, write in ways.items():
            await write([_record(backend.now()) for _ in range(group)])  # warm up
            groups = [
                [_record(backend.now()) for _ in range(group)] for _ in range(records // group)
            ]
            cpu, wall = _cpu(), time.perf_counter()
            for batch in groups:
                await write(batch)
            cpu, wall = _cpu() - cpu, time.perf_counter() - wall
            written = group * len(groups)
            print(
                f"{store:8} group {group:3} {way:11}: {cpu / written * 1e6:7.1f} µs CPU per record,"
                f" {wall / written * 1e6:7.1f} µs wall; load {os.getloadavg()[0]:.2f}",
                flush=True,
            )


async def main(stores: list[str], groups: list[int], records: int) -> None:
    from tests.pg_server import PostgresServer
    from tests.redis_server import RedisServer

    with tempfile.TemporaryDirectory() as folder:
        for store in stores:
            stop: Callable[[], None] = lambda: None  # noqa: E731
            if store == "sqlite":
                url = f"sqlite:///{folder}/afterwork.db"
            elif store == "redis":
                redis = RedisServer(Path(folder) / "redis")
                redis.start()
                url, stop = redis.url, redis.stop
            else:
                postgres = PostgresServer()
                postgres.start()
                url, stop = postgres.url, postgres.stop
            try:
                for group in groups:
                    await measure(store, url, records, group)
            finally:
                stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,redis,postgres")
    parser.add_argument("--groups", default="1,5,20")
    parser.add_argument("--records", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(
        main(
            args.stores.split(","),
            [int(g) for g in args.groups.split(",")],
            args.records,
        )
    )

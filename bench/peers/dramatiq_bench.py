"""Dramatiq with its Redis broker on a private Redis (see common.py).

    bench/.venv/bin/python -m bench.peers.dramatiq_bench redis://127.0.0.1:PORT/0

Actors are synchronous functions run by worker threads, so the (c) job is
``time.sleep(0.05)``. No bulk enqueue API (a group sends its messages one by one; batch:
n/a). One worker process (``--processes 1``; the CLI's default is one per core) at the
default 8 threads; ``--threads 100`` for (c).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers import common

broker = RedisBroker(url=common.redis_url())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop")
def noop() -> None:
    common.noop_job()


@dramatiq.actor(actor_name="sleepy")
def sleepy() -> None:
    common.sleepy_job()


@dramatiq.actor(actor_name="stamp")
def stamp(t0: float) -> None:
    common.stamp_job(t0)


ACTORS = {"noop": noop, "sleepy": sleepy, "stamp": stamp}


class Peer:
    name = "Dramatiq"
    version = f"{version('dramatiq')} (redis-py {version('redis')})"
    notes = ["no bulk enqueue API", "sync actors in threads: (c) is time.sleep(0.05)"]

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        broker.close()

    async def enqueue(self, kind: str, *args: float) -> None:
        ACTORS[kind].send(*args)

    async def enqueue_batch(self, kind: str, count: int) -> bool:
        return False

    def worker(self, concurrency: int | None) -> list[str]:
        command = [str(Path(sys.executable).with_name("dramatiq")), "bench.peers.dramatiq_bench"]
        return command + ["--processes", "1", "--threads", str(concurrency or 8)]


if __name__ == "__main__":
    common.main("bench.peers.dramatiq_bench")

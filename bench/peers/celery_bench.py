"""Celery with the Redis broker, no result backend (its default), on a private Redis.

    bench/.venv/bin/python -m bench.peers.celery_bench redis://127.0.0.1:PORT/0

Tasks are synchronous functions, so the (c) job is ``time.sleep(0.05)``. No bulk enqueue
API (a group publishes one message per task; batch: n/a). One ``celery worker`` at its
defaults (prefork pool, one child per core: 2 here); for concurrency 100 the thread pool
(``--pool threads --concurrency 100``) rather than 100 forked children.
"""

from __future__ import annotations

import sys
from importlib.metadata import version

from celery import Celery

from bench.peers import common

app = Celery("bench", broker=common.redis_url())


@app.task(name="noop")
def noop() -> None:
    common.noop_job()


@app.task(name="sleepy")
def sleepy() -> None:
    common.sleepy_job()


@app.task(name="stamp")
def stamp(t0: float) -> None:
    common.stamp_job(t0)


TASKS = {"noop": noop, "sleepy": sleepy, "stamp": stamp}


class Peer:
    name = "Celery"
    version = f"{version('celery')} + kombu {version('kombu')} (redis-py {version('redis')})"
    notes = [
        "no result backend",
        "default prefork pool with 2 children",
        "concurrency 100 on the thread pool",
    ]

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        app.close()

    async def enqueue(self, kind: str, *args: float) -> None:
        TASKS[kind].delay(*args)

    async def enqueue_batch(self, kind: str, count: int) -> bool:
        return False

    def worker(self, concurrency: int | None) -> list[str]:
        command = [sys.executable, "-m", "celery", "-A", "bench.peers.celery_bench:app"]
        command += ["worker", "--loglevel", "WARNING"]
        if concurrency:
            command += ["--pool", "threads", "--concurrency", str(concurrency)]
        return command


if __name__ == "__main__":
    common.main("bench.peers.celery_bench")

"""RQ on a private Redis (see common.py).

    bench/.venv/bin/python -m bench.peers.rq_bench redis://127.0.0.1:PORT/0

Jobs are synchronous functions; the default ``rq.Worker`` forks a work-horse process per
job and runs one job at a time, so the (c) job is ``time.sleep(0.05)`` and concurrency 100
in one worker process is n/a (``rq worker-pool`` runs several processes). Batch enqueue is
``Queue.enqueue_many`` (one pipeline).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

from redis import Redis
from rq import Queue

from bench.peers import common


def noop() -> None:
    common.noop_job()


def sleepy() -> None:
    common.sleepy_job()


def stamp(t0: float) -> None:
    common.stamp_job(t0)


class Peer:
    name = "RQ"
    version = f"{version('rq')} (redis-py {version('redis')})"
    notes = [
        "default Worker forks one work-horse per job, one job at a time",
        "(b) drains 1,000 jobs, not 10,000 (10,000 took over 4 minutes)",
    ]
    drain_count = 1_000

    async def open(self) -> None:
        self.redis = Redis.from_url(common.redis_url())
        self.queue = Queue(connection=self.redis)

    async def close(self) -> None:
        self.redis.close()

    async def enqueue(self, kind: str, *args: float) -> None:
        self.queue.enqueue(f"bench.peers.rq_bench.{kind}", *args)

    async def enqueue_batch(self, kind: str, count: int) -> bool:
        jobs = [Queue.prepare_data(f"bench.peers.rq_bench.{kind}") for _ in range(count)]
        self.queue.enqueue_many(jobs)
        return True

    def worker(self, concurrency: int | None) -> list[str] | None:
        if concurrency:
            return None
        return [str(Path(sys.executable).with_name("rq")), "worker", "--url", common.redis_url()]


if __name__ == "__main__":
    common.main("bench.peers.rq_bench")

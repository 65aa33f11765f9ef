"""An enqueue is safe to retry (issue 14): Redis paused past the socket timeout.

A stream of enqueues runs while Redis is paused (``CLIENT PAUSE``) for longer than the
client's socket timeout and its retry window: some enqueues are acknowledged, some raise
``EnqueueUnconfirmed``. Afterwards the store holds every acknowledged job, no job that was
reported as surely not stored, and nothing else: stored == acknowledged + (some of) the
ambiguous ones. Retrying the ambiguous enqueues with the same jobs stores each exactly once,
and a worker then runs every stored job exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest
import redis.asyncio as aioredis

from afterwork import Afterwork, JobStatus
from afterwork.backends.redis import RedisBackend
from afterwork.exceptions import EnqueueUnconfirmed

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

STREAM = 150


async def test_paused_redis_leaves_no_phantom_and_no_double_job(redis_url: str) -> None:
    prefix = f"afterwork:e{uuid.uuid4().hex[:10]}"
    store = RedisBackend(redis_url, prefix=prefix, socket_timeout=0.2, retry_for=0.4)
    aw = Afterwork(backend=store)
    ran: Counter[int] = Counter()

    @aw.task(name="record")
    async def record(n: int) -> int:
        ran[n] += 1
        return n

    admin = aioredis.from_url(redis_url)
    acknowledged: set[str] = set()
    ambiguous: list[EnqueueUnconfirmed] = []
    async with aw:
        pause = asyncio.Event()

        async def stream() -> None:
            for n in range(STREAM):
                if n == STREAM // 3:
                    pause.set()
                    await asyncio.sleep(0)  # let the pause be sent first
                try:
                    job = await record.enqueue(n)
                except EnqueueUnconfirmed as exc:
                    ambiguous.append(exc)
                else:
                    acknowledged.add(job.id)

        async def pauser() -> None:
            await pause.wait()
            await admin.client_pause(1500, all=True)

        await asyncio.gather(stream(), pauser())
        assert ambiguous, "the pause caused no unconfirmed enqueue: the test proved nothing"
        unsure = {i for exc in ambiguous if exc.may_exist for i in exc.job_ids}
        surely_not = {i for exc in ambiguous if not exc.may_exist for i in exc.job_ids}
        assert unsure, "a paused server had the requests: they may have been applied"
        assert all("retrying the same enqueue is safe" in str(exc) for exc in ambiguous)

        stored = {job.id for job in await aw.list_jobs(limit=10 * STREAM)}
        assert acknowledged <= stored
        assert stored <= acknowledged | unsure
        assert not stored & surely_not

        # Retrying the ambiguous calls with the same jobs: one job each, never two.
        for exc in ambiguous:
            await aw.enqueue_many(list(exc.jobs))
        again = await aw.list_jobs(limit=10 * STREAM)
        assert len(again) == len(acknowledged) + len(unsure | surely_not)

        await aw.drain()
        final = await aw.list_jobs(limit=10 * STREAM)
        assert {job.status for job in final} == {JobStatus.SUCCEEDED}
        assert all(count == 1 for count in ran.values())
        assert sum(ran.values()) == len(final)
    await admin.aclose()

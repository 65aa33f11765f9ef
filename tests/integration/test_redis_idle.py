"""An idle Redis worker's round trips: a job that ends does not wake the worker's wait for
work (it would claim nothing, then look again: two script calls per job for nothing);
one that goes back to a queue, or a new one, does; and the wait after a claim that found
fewer jobs than it asked for does not look again (the claim said when the next delayed
job falls due)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from afterwork.backends.base import NewJob, Outcome
from afterwork.backends.redis import RedisBackend
from afterwork.job import new_job_id

pytestmark = pytest.mark.anyio

WAIT = 10.0  # bound on every wait here; none is expected to come near it
TURNS = 50  # loop turns a wake-up would have taken effect within (it takes two)


def new() -> NewJob:
    return NewJob(id=new_job_id(), task="t")


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    store = RedisBackend(redis_url, prefix=f"afterwork:t{uuid.uuid4().hex[:12]}")
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def turns(n: int = TURNS) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_job_that_succeeds_does_not_wake_a_wait_for_work(backend: RedisBackend) -> None:
    backend._ensure_listener()  # subscribed first: wake-ups can reach the wait
    await asyncio.wait_for(backend._subscribed.wait(), WAIT)
    ticket = backend._wake.ticket()
    await backend.enqueue([new(), new()])
    assert await backend._wake.wait(ticket, WAIT)  # the enqueue's wake-up, out of the way
    first, second = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0)
    await backend.begin([first.lease, second.lease])
    waiting = asyncio.ensure_future(backend.wait_for_work(None, WAIT))
    await turns()
    assert not waiting.done()
    done = await asyncio.wait_for(backend.finish(first.lease, Outcome.succeeded()), WAIT)
    assert done is not None
    await turns()
    assert not waiting.done()  # nothing new to claim
    # Released: back in its queue, so the wait ends.
    await asyncio.wait_for(backend.finish(second.lease, Outcome.released()), WAIT)
    await asyncio.wait_for(waiting, WAIT / 2)
    waiting = asyncio.ensure_future(backend.wait_for_work(["other"], WAIT))
    await turns()
    assert not waiting.done()
    await backend.enqueue([NewJob(id=new_job_id(), task="t", queue="other")])
    await asyncio.wait_for(waiting, WAIT / 2)


async def script_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


async def test_the_wait_after_a_short_claim_does_not_look_again(
    backend: RedisBackend, redis_url: str
) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    try:
        backend._ensure_listener()
        await asyncio.wait_for(backend._subscribed.wait(), WAIT)
        ticket = backend._wake.ticket()
        await backend.enqueue([new(), NewJob(id=new_job_id(), task="t", delay=0.3)])
        assert await backend._wake.wait(ticket, WAIT)
        await admin.config_resetstat()
        claims = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0)
        assert len(claims) == 1  # the delayed one is not due yet
        waited = asyncio.get_running_loop().time()
        # The claim saw the queues empty and when the delayed job falls due: no look.
        await asyncio.wait_for(backend.wait_for_work(None, WAIT), WAIT)
        assert await script_calls(admin) == 1  # the claim's
        assert asyncio.get_running_loop().time() - waited < WAIT / 2  # ended at its due time
        (delayed,) = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0)
        assert delayed.job.run_at <= backend.now()
        # A job enqueued after the claim ends the wait (its wake-up came after the claim's
        # ticket), though the wait does not look.
        assert await backend.claim("w", queues=None, limit=5, lease_ttl=30.0) == []
        await backend.enqueue([new()])
        await asyncio.wait_for(backend.wait_for_work(None, WAIT), WAIT / 2)
        (fresh,) = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0)
        assert fresh.job.attempts == 0
    finally:
        await admin.aclose()

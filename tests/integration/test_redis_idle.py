"""An idle Redis worker's round trips: a job that ends does not wake the worker's wait for
work (it would claim nothing, then look again: two script calls per job for nothing);
one that goes back to a queue, or a new one, does."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

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
    await backend.enqueue([new(), new()])
    first, second = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0)
    await backend.begin([first.lease, second.lease])
    backend._ensure_listener()  # subscribed first: wake-ups can reach the wait
    await asyncio.wait_for(backend._subscribed.wait(), WAIT)
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

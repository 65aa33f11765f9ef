"""The Redis worker's hot calls: a claim rides in the script call of the starts and
finishes asked for in the same loop turn (one round trip per cycle, the finishes applied
first), on a connection of the worker's own that a timeout or a close never leaves with a
reply in flight."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from afterwork import JobStatus
from afterwork.backends.base import FlowLimit, NewJob, Outcome
from afterwork.backends.redis import RedisBackend
from afterwork.exceptions import BackendError, BackendUnavailable
from afterwork.job import new_job_id

pytestmark = pytest.mark.anyio

WAIT = 10.0  # bound on every wait here; none is expected to come near it


def new(task: str = "t") -> NewJob:
    return NewJob(id=new_job_id(), task=task)


async def _script_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.client_unpause()
        await client.aclose()


async def _opened(redis_url: str, **options: Any) -> RedisBackend:
    backend = RedisBackend(redis_url, prefix=f"afterwork:t{uuid.uuid4().hex[:12]}", **options)
    await backend.open()
    return backend


async def test_finishes_starts_and_a_claim_of_one_turn_share_one_script_call(
    redis_url: str, admin: aioredis.Redis
) -> None:
    backend = await _opened(redis_url)
    try:
        await backend.enqueue([new() for _ in range(4)])
        first = await backend.claim("w", queues=None, limit=2, lease_ttl=30.0)
        await backend.begin([first[0].lease])
        await admin.config_resetstat()
        finished, begun, claimed = await asyncio.wait_for(
            asyncio.gather(
                backend.finish(first[0].lease, Outcome.succeeded()),
                backend.begin([first[1].lease]),
                backend.claim("w", queues=None, limit=5, lease_ttl=30.0),
            ),
            WAIT,
        )
        # Redis learns the combined script on its first use: EVALSHA, NOSCRIPT, EVAL.
        assert await _script_calls(admin) <= 2
        assert finished is not None and finished.status is JobStatus.SUCCEEDED
        assert begun[0] is not None and begun[0].attempts == 1
        assert len(claimed) == 2
        # Known to Redis now: one script call for the three.
        third, fourth = claimed
        await backend.begin([third.lease])
        await admin.config_resetstat()
        finished, begun, again = await asyncio.wait_for(
            asyncio.gather(
                backend.finish(third.lease, Outcome.succeeded()),
                backend.begin([fourth.lease]),
                backend.claim("w", queues=None, limit=5, lease_ttl=30.0),
            ),
            WAIT,
        )
        assert await _script_calls(admin) == 1
        assert finished is not None and finished.status is JobStatus.SUCCEEDED
        assert begun[0] is not None and begun[0].status is JobStatus.RUNNING
        assert again == []
    finally:
        await backend.aclose()


async def test_the_claim_in_a_flush_sees_the_slots_its_finishes_free(redis_url: str) -> None:
    backend = await _opened(redis_url)
    limits = {"t": FlowLimit(1)}
    try:
        await backend.enqueue([new() for _ in range(2)])
        (first,) = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0, limits=limits)
        await backend.begin([first.lease])
        # The finish frees the task's one place; the claim asked for in the same turn,
        # applied after it in the same script call, takes it.
        finished, claimed = await asyncio.wait_for(
            asyncio.gather(
                backend.finish(first.lease, Outcome.succeeded()),
                backend.claim("w", queues=None, limit=5, lease_ttl=30.0, limits=limits),
            ),
            WAIT,
        )
        assert finished is not None and finished.status is JobStatus.SUCCEEDED
        assert [c.job.status for c in claimed] == [JobStatus.RUNNING]
        assert claimed[0].job.id != first.job.id
    finally:
        await backend.aclose()


async def test_a_timed_out_hot_call_drops_its_connection(
    redis_url: str, admin: aioredis.Redis
) -> None:
    backend = await _opened(redis_url, socket_timeout=0.3)
    try:
        await backend.enqueue([new() for _ in range(3)])
        (first,) = await backend.claim("w", queues=None, limit=1, lease_ttl=30.0)
        assert backend._hot_conn is not None
        # Paused for writes (scripts included): the claim's reply does not come in time.
        await admin.client_pause(60_000, all=False)
        with pytest.raises(BackendUnavailable) as caught:
            await asyncio.wait_for(backend.claim("w", queues=None, limit=1, lease_ttl=30.0), WAIT)
        assert caught.value.may_have_applied
        assert backend._hot_conn is None  # never reused with that reply still to come
        await admin.client_unpause()
        # A new connection: each call reads its own reply, whatever the paused one did.
        (started,) = await asyncio.wait_for(backend.begin([first.lease]), WAIT)
        assert started is not None and started.id == first.job.id
        claimed = await asyncio.wait_for(
            backend.claim("w", queues=None, limit=5, lease_ttl=30.0), WAIT
        )
        assert first.job.id not in {c.job.id for c in claimed}
        for claim in claimed:
            stored = await backend.get(claim.job.id)
            assert stored is not None and stored.status is JobStatus.RUNNING
    finally:
        await backend.aclose()


async def test_closing_the_store_fails_a_claim_waiting_on_a_paused_server(
    redis_url: str, admin: aioredis.Redis
) -> None:
    backend = await _opened(redis_url)
    try:
        await backend.enqueue([new() for _ in range(2)])
        await backend.claim("w", queues=None, limit=1, lease_ttl=30.0)
        await admin.client_pause(60_000, all=False)
        claim = asyncio.ensure_future(backend.claim("w", queues=None, limit=1, lease_ttl=30.0))
        for _ in range(1000):  # until the call is on the wire
            if backend._hot_busy:
                break
            await asyncio.sleep(0)
        assert backend._hot_busy
        await backend.aclose()
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(claim, WAIT)
    finally:
        await backend.aclose()


async def test_a_claim_cancelled_on_the_wire_hands_its_jobs_back(
    redis_url: str, admin: aioredis.Redis
) -> None:
    backend = await _opened(redis_url)
    try:
        (job,) = await backend.enqueue([new()])
        await admin.client_pause(60_000, all=False)
        claim = asyncio.ensure_future(backend.claim("w", queues=None, limit=1, lease_ttl=30.0))
        for _ in range(1000):  # until the call is on the wire
            if backend._hot_busy:
                break
            await asyncio.sleep(0)
        assert backend._hot_busy
        claim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await claim
        await admin.client_unpause()
        # The cancelled claim took the job; it is released before the next claim runs,
        # which gets it at once instead of after the lease's 30 s.
        (again,) = await asyncio.wait_for(
            backend.claim("w", queues=None, limit=1, lease_ttl=30.0), WAIT
        )
        assert again.job.id == job.id
        assert again.job.attempts == 0
    finally:
        await backend.aclose()


async def test_a_claim_that_fails_in_a_flush_fails_alone(
    redis_url: str, admin: aioredis.Redis
) -> None:
    backend = await _opened(redis_url)
    try:
        await backend.enqueue([new()])
        (first,) = await backend.claim("w", queues=None, limit=1, lease_ttl=30.0)
        await backend.begin([first.lease])
        # A queue whose key is not a sorted set: the claim's script fails on it.
        await admin.set(f"{backend.prefix}:q:broken", "not a sorted set")
        finished, claimed = await asyncio.wait_for(
            asyncio.gather(
                backend.finish(first.lease, Outcome.succeeded()),
                backend.claim("w", queues=["broken"], limit=1, lease_ttl=30.0),
                return_exceptions=True,
            ),
            WAIT,
        )
        assert isinstance(claimed, BackendError) and not isinstance(claimed, BackendUnavailable)
        assert not isinstance(finished, BaseException)
        assert finished is not None and finished.status is JobStatus.SUCCEEDED
        stored = await backend.get(first.job.id)
        assert stored is not None and stored.status is JobStatus.SUCCEEDED
    finally:
        await backend.aclose()

"""The Redis claim that begins the jobs a worker starts at once (``lua/claim.lua``,
``begin_claimed`` in ``lua/common.lua``): one script call for the claim and the begins, a
worker stopped while its claim is in flight leaves no attempt, a cancel pushed meanwhile
reaches the worker once the claim is its own, and a claim cancelled on the wire hands its
begun jobs back unstarted. What every store whose claim begins must do is in
``tests/backends/test_claim_begin.py`` (run on a Redis Cluster too).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from afterwork import Afterwork, JobStatus
from afterwork.backends.base import FlowLimit, NewJob, Outcome
from afterwork.backends.redis import RedisBackend
from afterwork.job import new_job_id

from ..waiting import eventually

pytestmark = pytest.mark.anyio

WAIT = 10.0  # bound on every wait here; none is expected to come near it


def new() -> NewJob:
    return NewJob(id=new_job_id(), task="t")


async def script_calls(client: aioredis.Redis) -> int:
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


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    store = RedisBackend(redis_url, prefix=f"afterwork:t{uuid.uuid4().hex[:12]}")
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
async def app(redis_url: str) -> AsyncIterator[Afterwork]:
    aw = Afterwork(f"{redis_url}?prefix=afterwork:t{uuid.uuid4().hex[:12]}", lease_ttl=60.0)
    async with aw:
        yield aw


async def test_the_claim_and_its_begins_are_one_script_call(
    backend: RedisBackend, admin: aioredis.Redis
) -> None:
    await backend.enqueue([new() for _ in range(4)])
    await backend.claim("w", queues=None, limit=1, lease_ttl=30.0, begin=1)  # scripts known
    await admin.config_resetstat()
    claims = await asyncio.wait_for(
        backend.claim("w", queues=None, limit=3, lease_ttl=30.0, begin=3), WAIT
    )
    begun = await asyncio.wait_for(backend.begin([c.lease for c in claims]), WAIT)
    assert await script_calls(admin) == 1  # the claim's; the begin wrote nothing
    assert [job.attempts if job else None for job in begun] == [1, 1, 1]
    for job in begun:
        assert job is not None
        assert await backend.get(job.id) == job


async def wire(backend: RedisBackend) -> None:
    """Until a claim of ``backend`` is on the wire (Redis paused: it waits there)."""

    async def sent() -> bool:
        return backend._claiming > 0 and backend._hot_busy

    await eventually(sent, timeout=WAIT, interval=0.005)


async def test_a_worker_stopped_while_its_claim_runs_leaves_no_attempt(
    app: Afterwork, admin: aioredis.Redis
) -> None:
    backend = app.backend
    assert isinstance(backend, RedisBackend)

    @app.task
    async def work() -> None:
        raise AssertionError("a stopped worker starts nothing")

    job = await work.enqueue()
    stream = backend.events()
    try:
        # Paused for writes (scripts included): the worker's claim waits in Redis.
        await admin.client_pause(60_000, all=False)
        async with app.worker(concurrency=4) as worker:
            await wire(backend)
            worker.stop()
            await admin.client_unpause()
        stored = await app.get_job(job.id)
        assert stored is not None and stored.status is JobStatus.QUEUED
        assert stored.attempts == 0 and stored.timeline == () and stored.started_at is None
        # The claim did begin it: its start is in the stream, and the release after it.
        kinds: list[str] = []
        with anyio.fail_after(WAIT):
            async for event in stream:
                if event.job_id == job.id and event.kind != "enqueued":
                    kinds.append(event.kind)
                if event.kind == "released":
                    break
        assert kinds == ["started", "released"]
    finally:
        await stream.aclose()


async def test_a_cancel_pushed_while_the_claim_runs_stops_the_job_at_once(
    app: Afterwork, admin: aioredis.Redis
) -> None:
    backend = app.backend
    assert isinstance(backend, RedisBackend)

    @app.task
    async def work() -> None:
        await anyio.sleep_forever()

    job = await work.enqueue()
    await admin.client_pause(60_000, all=False)
    async with app.worker(concurrency=4):
        await wire(backend)
        # As a cancel recorded just after the claim, its message read before the claim's
        # reply (the channel is another connection): the worker does not know the job yet.
        backend._cancel_pushed(job.id)
        await admin.client_unpause()

        async def cancelled() -> bool:
            done = await app.get_job(job.id)
            return done is not None and done.status is JobStatus.CANCELLED

        # Well before the next heartbeat (20 s): the worker was told again.
        await eventually(cancelled, timeout=WAIT, interval=0.01)


async def test_a_begun_claim_cancelled_on_the_wire_hands_its_jobs_back_unstarted(
    backend: RedisBackend, admin: aioredis.Redis
) -> None:
    (job,) = await backend.enqueue([new()])
    await admin.client_pause(60_000, all=False)
    claim = asyncio.ensure_future(backend.claim("w", queues=None, limit=1, lease_ttl=30.0, begin=1))
    await wire(backend)
    claim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claim
    await admin.client_unpause()
    # The cancelled claim took and began the job; it is released before the next claim
    # runs, as the claim alone would have left it.
    (again,) = await asyncio.wait_for(
        backend.claim("w", queues=None, limit=1, lease_ttl=30.0), WAIT
    )
    assert again.job.id == job.id
    assert again.job.attempts == 0 and again.job.timeline == ()
    await backend.finish(again.lease, Outcome.released())
    stored = await backend.get(job.id)
    assert stored is not None and stored.attempts == 0 and stored.started_at is None


async def test_the_claim_with_flow_limits_begins_too(
    backend: RedisBackend, admin: aioredis.Redis
) -> None:
    limits = {"t": FlowLimit(2)}
    await backend.enqueue([new() for _ in range(3)])
    await admin.config_resetstat()
    claims = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0, limits=limits, begin=5)
    assert len(claims) == 2  # the fleet-wide limit holds
    begun = await backend.begin([c.lease for c in claims])
    assert await script_calls(admin) <= 2  # the claim (EVALSHA, then EVAL on first use)
    assert [job.attempts if job else None for job in begun] == [1, 1]

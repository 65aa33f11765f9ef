"""Enqueue on Redis: concurrent calls share one script call (group commit), each caller
still answered only after Redis applied its jobs, and one bad job fails only its caller."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from afterwork import Afterwork, JobStatus
from afterwork.exceptions import BackendError

pytestmark = pytest.mark.anyio


def _url(redis_url: str) -> str:
    return f"{redis_url}?prefix=afterwork:t{uuid.uuid4().hex[:12]}"


async def _script_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


@pytest.fixture
async def opened(redis_url: str) -> AsyncIterator[tuple[Afterwork, Any, aioredis.Redis]]:
    """An open store with a task ``noop`` enqueued once (Redis knows the script from then
    on), and a plain client on the same server."""
    aw = Afterwork(_url(redis_url))

    @aw.task(name="noop")
    async def noop(n: int) -> None: ...

    client = aioredis.Redis.from_url(redis_url)
    try:
        async with aw:
            await noop.enqueue(-1)
            yield aw, noop, client
    finally:
        await client.aclose()


async def test_concurrent_enqueues_share_script_calls_and_all_are_stored(
    opened: tuple[Afterwork, Any, aioredis.Redis],
) -> None:
    aw, noop, client = opened
    await client.config_resetstat()
    jobs = await asyncio.gather(*(noop.enqueue(n) for n in range(64)))
    calls = await _script_calls(client)
    # The first call goes alone; the 63 that arrive while it runs share the next.
    assert calls <= 3, calls
    assert [job.args for job in jobs] == [[n] for n in range(64)]
    assert all(job.created_now for job in jobs)
    for job in jobs:
        stored = await aw.get_job(job.id)
        assert stored is not None and stored.status is JobStatus.QUEUED
        assert stored.args == job.args


async def test_one_bad_job_in_a_group_fails_only_its_caller(
    opened: tuple[Afterwork, Any, aioredis.Redis],
) -> None:
    aw, noop, client = opened
    bad = aw.build_job(noop, (0,), {}, {})
    # A key of the wrong type where the job's record goes: the script fails on it.
    prefix = aw.backend.prefix  # type: ignore[attr-defined]
    await client.set(f"{prefix}:job:{bad.id}", "not a hash")
    good = [aw.build_job(noop, (n,), {}, {}) for n in range(1, 9)]
    calls = [aw.enqueue_many([new]) for new in [*good[:4], bad, *good[4:]]]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[4], BackendError), results[4]
    for new, result in zip(good, [*results[:4], *results[5:]], strict=True):
        assert isinstance(result, list), result
        assert result[0].id == new.id
        stored = await aw.get_job(new.id)
        assert stored is not None and stored.status is JobStatus.QUEUED
    # The bad job left nothing: not in the listing index, its record untouched.
    assert await client.zscore(f"{prefix}:all", bad.id) is None
    assert await client.get(f"{prefix}:job:{bad.id}") == b"not a hash"
    assert all(job.id != bad.id for job in await aw.list_jobs())


async def test_an_enqueue_writes_the_queue_set_only_for_a_queue_first_job(
    opened: tuple[Afterwork, Any, aioredis.Redis],
) -> None:
    aw, noop, client = opened
    prefix = aw.backend.prefix  # type: ignore[attr-defined]
    await client.config_resetstat()
    for n in range(5):
        await noop.enqueue(n)
    stats = await client.info("commandstats")
    # The queue already waits a job (the fixture's): no queue-set write, and no separate
    # "is this id new" read (the listing index's ZADD NX answers it).
    assert "cmdstat_sadd" not in stats, stats.get("cmdstat_sadd")
    assert "cmdstat_exists" not in stats, stats.get("cmdstat_exists")
    other = await aw.enqueue_many([aw.build_job(noop, (9,), {}, {"queue": "other"})])
    assert await client.sismember(f"{prefix}:queues", "other")
    assert {row.queue: row.counts[JobStatus.QUEUED] for row in await aw.stats()} == {
        "default": 6,
        "other": 1,
    }
    assert [job.id for job in await aw.list_jobs(queue="other")] == [other[0].id]


async def test_a_job_whose_record_expired_is_created_again_under_its_id(
    opened: tuple[Afterwork, Any, aioredis.Redis],
) -> None:
    aw, noop, client = opened
    prefix = aw.backend.prefix  # type: ignore[attr-defined]
    new = aw.build_job(noop, (1,), {}, {})
    await aw.enqueue_many([new])
    await client.hset(f"{prefix}:job:{new.id}", "args", "[2]")
    (again,) = await aw.enqueue_many([new])  # a repeated call: the stored job, not a new one
    assert again.id == new.id and again.args == [2]
    # The record gone (its safety-net EXPIRE), its id still in the listing index.
    await client.delete(f"{prefix}:job:{new.id}")
    await aw.enqueue_many([new])
    stored = await aw.get_job(new.id)
    assert stored is not None and stored.status is JobStatus.QUEUED and stored.args == [1]


async def test_a_caller_cancelled_while_waiting_for_its_group_stores_nothing(
    redis_url: str,
) -> None:
    aw = Afterwork(_url(redis_url))

    @aw.task(name="noop")
    async def noop(n: int) -> None: ...

    async with aw:
        await noop.enqueue(-1)
        first = asyncio.ensure_future(noop.enqueue(1))
        for _ in range(100):  # until first is in flight: the next caller waits for it
            if aw.backend._enq_busy:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0)
        assert aw.backend._enq_busy  # type: ignore[attr-defined]
        waiting_new = aw.build_job(noop, (2,), {}, {})
        waiting = asyncio.ensure_future(aw.enqueue_many([waiting_new]))
        await asyncio.sleep(0)
        waiting.cancel()
        later = await noop.enqueue(3)
        stored_first = await first
        assert waiting.cancelled()
        assert await aw.get_job(waiting_new.id) is None
        assert (await aw.get_job(stored_first.id)) is not None
        assert (await aw.get_job(later.id)) is not None

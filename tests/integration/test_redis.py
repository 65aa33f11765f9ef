"""Redis-specific behaviour beyond the conformance suite: restricted ACL, malformed
records, an unreachable server, cancel pushed to the owning worker, the event stream."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis

from afterwork import Afterwork, JobContext, JobStatus
from afterwork.backends.redis import RedisBackend
from afterwork.exceptions import BackendUnavailable
from afterwork.job import new_job_id

from ..redis_server import RedisServer, free_port, redis_binary
from .conftest import acl_url

pytestmark = pytest.mark.anyio


def _prefix() -> str:
    return f"afterwork:t{uuid.uuid4().hex[:12]}"


async def test_everything_runs_under_an_acl_user_limited_to_the_prefix(
    acl_redis: RedisServer,
) -> None:
    aw = Afterwork(acl_url(acl_redis, _prefix()), lease_ttl=5.0)

    @aw.task(result_ttl=60)
    async def double(x: int) -> int:
        return 2 * x

    async with aw:
        jobs = [await double.enqueue(i) for i in range(20)]
        await double.options(delay=30).enqueue(99)
        async with aw.worker(concurrency=4):
            done = [await job.wait(timeout=10) for job in jobs]
        assert [j.result for j in done] == [2 * i for i in range(20)]
        assert await aw.backend.recover_expired(max_recoveries=3) == []
        assert await aw.purge(older_than=0) == 20
        assert {s.queue for s in await aw.stats()} == {"default"}
        assert len(await aw.list_jobs(limit=100)) == 1
        assert await aw.cancel(jobs[0].id) is None
    # Outside the prefix the user can do nothing (so the test above proves least privilege).
    client = aioredis.Redis(port=acl_redis.port, username="aw", password="pw")
    try:
        with pytest.raises(Exception, match="(?i)no ?perm|permission"):
            await client.set("elsewhere", "1")
        with pytest.raises(Exception, match="(?i)no ?perm|permission"):
            await client.flushdb()
    finally:
        await client.aclose()


async def test_malformed_records_are_quarantined_and_the_worker_carries_on(
    redis_url: str,
) -> None:
    prefix = _prefix()
    aw = Afterwork(f"{redis_url}?prefix={prefix}")
    ran: list[int] = []

    @aw.task
    async def fine(x: int) -> None:
        ran.append(x)

    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    bad_json, wrong_type, missing = new_job_id(), new_job_id(), new_job_id()
    async with aw:
        good = await fine.enqueue(1)
        # A job hash whose arguments are not JSON, a job key that is not a hash, and a
        # queue entry with no job at all, all under the prefix.
        await raw.hset(
            f"{prefix}:job:{bad_json}",
            mapping={
                "id": bad_json, "task": fine.name, "queue": "default", "status": "queued",
                "args": "{not json", "kwargs": "{}", "prio": "0", "attempts": "0", "max": "1",
                "recov": "0", "created": "1", "run_at": "1",
            },
        )  # fmt: skip
        await raw.set(f"{prefix}:job:{wrong_type}", "garbage")
        await raw.zadd(f"{prefix}:q:default", {bad_json: -1e13, wrong_type: -1e13, missing: -1e13})
        await raw.zadd(f"{prefix}:delayed", {new_job_id(): 0})
        await aw.drain()
        assert ran == [1]
        assert (await aw.get_job(good.id)).status is JobStatus.SUCCEEDED  # type: ignore[union-attr]
        for job_id in (bad_json, wrong_type):
            job = await aw.get_job(job_id)
            assert job is not None and job.status is JobStatus.FAILED
            assert job.error is not None and job.error.type == "afterwork.MalformedRecord"
        assert await raw.get(f"{prefix}:bad:{wrong_type}") == "garbage"  # kept for a human
        assert await aw.get_job(missing) is None
        listed = {j.id for j in await aw.list_jobs(status=JobStatus.FAILED)}
        assert wrong_type in listed
    await raw.aclose()


async def test_unreachable_server_raises_backend_unavailable_in_bounded_time() -> None:
    aw = Afterwork(backend=RedisBackend(f"redis://127.0.0.1:{free_port()}/0", retry_for=1.0))

    @aw.task
    async def noop() -> None: ...

    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await noop.enqueue()
    assert time.monotonic() - started < 5.0
    await aw.aclose()


async def test_enqueue_raises_backend_unavailable_when_the_server_dies(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    redis_binary()
    server = RedisServer(tmp_path_factory.mktemp("redis-down"))
    server.start()
    backend = RedisBackend(server.url, prefix=_prefix(), retry_for=1.0)
    aw = Afterwork(backend=backend)

    @aw.task
    async def noop() -> None: ...

    try:
        async with aw:
            await noop.enqueue()
            server.kill()
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await noop.enqueue()
            assert time.monotonic() - started < 5.0
            server.start()  # back: the same backend works again without reopening
            job = await noop.enqueue()
            assert job.status is JobStatus.QUEUED
    finally:
        server.stop()


async def test_cancel_reaches_a_worker_in_another_process_at_once(redis_url: str) -> None:
    url = f"{redis_url}?prefix={_prefix()}"
    # Heartbeats every 20 s: only the pushed cancel can stop the job quickly.
    worker_side = Afterwork(url, lease_ttl=60.0)
    client_side = Afterwork(url)
    started = asyncio.Event()

    @worker_side.task(name="slow")
    async def slow(ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(30)

    @client_side.task(name="slow")
    async def slow_stub() -> None: ...

    async with worker_side, client_side:
        job = await slow_stub.enqueue()
        async with worker_side.worker(concurrency=1):
            await asyncio.wait_for(started.wait(), 10)
            asked = time.monotonic()
            await client_side.cancel(job.id)
            done = await client_side.wait_for_job(job.id, timeout=5)
            elapsed = time.monotonic() - asked
        assert done.status is JobStatus.CANCELLED
        assert elapsed < 1.0


async def test_events_from_another_process_carry_stream_ids(redis_url: str) -> None:
    url = f"{redis_url}?prefix={_prefix()}"
    watcher, producer = Afterwork(url), Afterwork(url)

    @producer.task
    async def noop() -> None: ...

    async with watcher, producer:
        stream = watcher.backend.events()
        job = await noop.enqueue()
        await producer.drain()
        kinds = []
        async with asyncio.timeout(5):
            async for event in stream:
                if event.job_id == job.id:
                    assert event.id is not None and "-" in event.id
                    kinds.append(event.kind)
                    if event.kind == "succeeded":
                        break
        await stream.aclose()
        assert kinds == ["enqueued", "started", "succeeded"]

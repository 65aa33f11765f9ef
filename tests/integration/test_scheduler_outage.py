"""Cron through a short store outage (issue 14): Redis paused while two schedulers run.

An every-second schedule, two schedulers (two processes' worth) on a fake clock, Redis
paused (``CLIENT PAUSE``) past the client's socket timeout for three ticks: their passes
fail. When Redis answers again, the ticks missed inside the outage are each enqueued once
(none dropped, none doubled), and the warning names the store, not absent schedulers.
Beyond ``catch_up`` the misfire policy applies.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from afterwork import Afterwork, Job
from afterwork.backends.redis import RedisBackend
from afterwork.exceptions import BackendUnavailable
from afterwork.testing import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

START = datetime(2024, 1, 1, tzinfo=UTC).timestamp()


def tick_of(job: Job) -> float:
    assert job.key is not None
    return datetime.fromisoformat(job.key.rpartition("@")[2]).timestamp()


def instance(redis_url: str, prefix: str, clock: FakeClock, catch_up: float) -> Afterwork:
    store = RedisBackend(redis_url, prefix=prefix, clock=clock, socket_timeout=0.2, retry_for=0.3)
    aw = Afterwork(backend=store)

    @aw.every(1, name="heartbeat", catch_up=catch_up)
    def heartbeat() -> None: ...

    return aw


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.client_unpause()
        await client.aclose()


async def outage(
    admin: aioredis.Redis, clock: FakeClock, schedulers: list[Afterwork], seconds: int
) -> None:
    """Pause Redis; for ``seconds`` ticks every scheduler's pass fails; then unpause."""
    await admin.client_pause(60_000, all=False)  # WRITE: CLIENT UNPAUSE still gets through
    for _ in range(seconds):
        clock.advance(1)
        for aw in schedulers:
            with pytest.raises(BackendUnavailable):
                await aw.scheduler.run_pending()
    await admin.client_unpause()


@pytest.mark.parametrize("catch_up", [60.0])
async def test_ticks_missed_in_an_outage_are_enqueued_once_when_it_ends(
    redis_url: str, admin: aioredis.Redis, catch_up: float, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"afterwork:s{uuid.uuid4().hex[:10]}"
    clock = FakeClock(START)
    one, two = (instance(redis_url, prefix, clock, catch_up) for _ in range(2))
    async with one, two:
        jobs = await one.scheduler.run_pending() + await two.scheduler.run_pending()
        await outage(admin, clock, [one, two], seconds=3)
        clock.advance(1)
        with caplog.at_level(logging.WARNING, logger="afterwork.scheduler"):
            jobs += await one.scheduler.run_pending() + await two.scheduler.run_pending()
        jobs += await one.scheduler.run_pending() + await two.scheduler.run_pending()
        stored = await one.list_jobs(limit=100)
    assert sorted(tick_of(job) for job in jobs) == [START + n for n in range(5)]
    assert sorted(tick_of(job) for job in stored) == [START + n for n in range(5)]
    (warning,) = [r.getMessage() for r in caplog.records if "missed" in r.getMessage()]
    assert "missed while the store was unreachable" in warning
    assert "no scheduler ran" not in warning
    assert "4 tick(s)" in warning  # the three inside the outage and the one due now


async def test_beyond_catch_up_the_misfire_policy_applies(
    redis_url: str, admin: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"afterwork:s{uuid.uuid4().hex[:10]}"
    clock = FakeClock(START)
    aw = instance(redis_url, prefix, clock, catch_up=2.0)
    async with aw:
        jobs = await aw.scheduler.run_pending()
        await outage(admin, clock, [aw], seconds=5)
        with caplog.at_level(logging.WARNING, logger="afterwork.scheduler"):
            jobs += await aw.scheduler.run_pending()
    # Ticks 1..5 were missed; only those at most 2 s old (3, 4, 5) are enqueued.
    assert sorted(tick_of(job) for job in jobs) == [START, START + 3, START + 4, START + 5]
    (warning,) = [r.getMessage() for r in caplog.records if "missed" in r.getMessage()]
    assert "past catch_up=2s and dropped" in warning

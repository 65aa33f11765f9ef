"""``Job.result_or_raise()`` and the ``*_dt`` helpers, on jobs a real worker ran."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from afterwork import Afterwork, JobStatus
from afterwork.exceptions import AfterworkError, JobFailed
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio

START = 1_700_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def aw(clock: FakeClock) -> AsyncIterator[Afterwork]:
    instance = Afterwork("memory://", clock=clock, seed=1)
    async with instance:
        yield instance


async def test_result_of_a_succeeded_job(aw: Afterwork) -> None:
    @aw.task
    async def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    job = await add.enqueue(2, 3)
    assert await aw.drain() == 1
    done = await job.refresh()
    assert done.status is JobStatus.SUCCEEDED
    assert done.result_or_raise() == {"sum": 5}


async def test_a_failed_job_raises_job_failed_with_the_job_and_its_error(aw: Afterwork) -> None:
    @aw.task
    async def broken() -> None:
        raise ValueError("no such customer")

    job = await broken.enqueue()
    await aw.drain()
    done = await job.refresh()
    assert done.status is JobStatus.FAILED
    with pytest.raises(JobFailed) as caught:
        done.result_or_raise()
    failure = caught.value
    assert isinstance(failure, AfterworkError)
    assert failure.job_id == job.id
    assert failure.job is done
    assert failure.error is not None and failure.error == done.error
    assert failure.error.type == "ValueError"
    assert "no such customer" in str(failure)
    assert "Traceback" in failure.error.traceback


async def test_a_cancelled_job_raises_job_failed(aw: Afterwork) -> None:
    @aw.task
    async def later() -> None: ...

    job = await later.options(delay=60).enqueue()
    cancelled = await aw.cancel(job.id)
    assert cancelled is not None and cancelled.status is JobStatus.CANCELLED
    with pytest.raises(JobFailed, match="cancelled") as caught:
        cancelled.result_or_raise()
    assert caught.value.job is cancelled


async def test_an_unfinished_job_has_no_result_yet(aw: Afterwork) -> None:
    @aw.task
    async def pending() -> int:
        return 1

    job = await pending.enqueue()
    assert job.status is JobStatus.QUEUED
    with pytest.raises(RuntimeError, match=r"not finished.*job\.wait\(\)"):
        job.result_or_raise()


async def test_dt_helpers_are_aware_utc_datetimes_of_the_timestamps(
    aw: Afterwork, clock: FakeClock
) -> None:
    @aw.task
    async def tick() -> None: ...

    job = await tick.options(delay=30).enqueue()
    assert job.created_at_dt == datetime.fromtimestamp(START, UTC)
    assert job.created_at_dt.tzinfo is UTC
    assert job.run_at_dt == datetime.fromtimestamp(START + 30, UTC)
    assert job.created == job.created_at_dt and job.scheduled_for == job.run_at_dt
    assert job.started_at_dt is None and job.finished_at_dt is None

    clock.advance(45)
    assert await aw.drain() == 1
    done = await job.refresh()
    assert done.started_at is not None and done.finished_at is not None
    assert done.started_at_dt == datetime.fromtimestamp(done.started_at, UTC)
    assert done.finished_at_dt == datetime.fromtimestamp(done.finished_at, UTC)
    assert done.started_at_dt is not None and done.started_at_dt.tzinfo is UTC
    assert done.started_at_dt >= datetime.fromtimestamp(START + 45, UTC)

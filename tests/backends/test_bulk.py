"""Bulk retry and cancel by filter, on every store; each job goes through the lifecycle."""

from __future__ import annotations

import pytest

from afterwork import Afterwork, JobStatus
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio


class Boom(Exception):
    pass


async def test_retry_jobs_by_status_task_error_type_and_time(
    aw: Afterwork, clock: FakeClock
) -> None:
    @aw.task(name="flaky")
    async def flaky(n: int) -> None:
        raise (Boom if n % 2 else ValueError)(f"n={n}")

    @aw.task(name="other")
    async def other() -> None:
        raise Boom("other")

    old = [await flaky.enqueue(n) for n in range(2)]
    await aw.drain()
    clock.advance(7200)  # two hours later
    recent = [await flaky.enqueue(n) for n in range(2, 6)] + [await other.enqueue()]
    await aw.drain()
    boom_recent = {j.id for j in recent[:4] if int(j.args[0]) % 2}
    # A dry selection first: what the CLI counts.
    events = aw.backend.events()
    retried = await aw.retry_jobs(
        status="failed", task="flaky", error_type=f"{__name__}.Boom", since=3600
    )
    assert {j.id for j in retried} == boom_recent
    assert all(j.status is JobStatus.QUEUED and j.attempts == 0 for j in retried)
    # Each went through the manual retry of the lifecycle: a "retried" event per job.
    seen: set[str] = set()
    while len(seen) < len(boom_recent):
        event = await anext(events)
        if event.kind == "retried":
            seen.add(event.job_id)
    await events.aclose()
    assert seen == boom_recent
    # The old ones and the other task were left alone.
    for job in old:
        again = await aw.get_job(job.id)
        assert again is not None and again.status is JobStatus.FAILED
    # until= takes the old ones only.
    assert {j.id for j in await aw.retry_jobs(task="flaky", until=3600)} == {j.id for j in old}


async def test_cancel_jobs_by_queue_and_refusal_of_inapplicable_status(aw: Afterwork) -> None:
    @aw.task(name="media", queue="media")
    async def media(n: int) -> None: ...

    @aw.task(name="mail")
    async def mail(n: int) -> None: ...

    waiting = [await media.enqueue(n) for n in range(3)] + [
        await media.options(delay=60).enqueue(9)
    ]
    kept = await mail.enqueue(1)
    cancelled = await aw.cancel_jobs(queue="media")
    assert {j.id for j in cancelled} == {j.id for j in waiting}
    assert all(j.status is JobStatus.CANCELLED for j in cancelled)
    still = await aw.get_job(kept.id)
    assert still is not None and still.status is JobStatus.QUEUED
    assert await aw.cancel_jobs(queue="media") == []  # nothing left to cancel
    with pytest.raises(ValueError, match="applies to"):
        await aw.retry_jobs(status="queued")
    with pytest.raises(ValueError, match="since"):
        await aw.retry_jobs(since=-1)

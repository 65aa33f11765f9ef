"""Every state change is a JobEvent an in-process subscriber can iterate."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from afterwork import Afterwork, JobContext, JobEvent, JobStatus

pytestmark = pytest.mark.anyio


async def test_subscriber_sees_a_jobs_whole_life() -> None:
    aw = Afterwork("memory://")

    @aw.task
    async def work(ctx: JobContext) -> int:
        ctx.progress(0.5, "half")
        return 1

    async with aw:
        seen: list[JobEvent] = []
        finished = asyncio.Event()

        stream = aw.events()  # subscribed from here on

        async def consume() -> None:
            async for event in stream:
                seen.append(event)
                if event.status is JobStatus.SUCCEEDED:
                    finished.set()
                    return

        async with asyncio.timeout(10):
            consumer = asyncio.create_task(consume())
            job = await work.enqueue()
            await aw.drain()
            await finished.wait()
            await consumer
            await stream.aclose()
    assert [e.kind for e in seen] == ["enqueued", "started", "progress", "succeeded"]
    assert {e.job_id for e in seen} == {job.id}
    assert seen[2].progress == 0.5 and seen[2].message == "half"
    assert seen[-1].to_dict()["status"] == "succeeded"
    assert JobEvent.from_dict(seen[-1].to_dict()) == seen[-1]


async def test_subscription_ends_when_the_backend_closes() -> None:
    aw = Afterwork("memory://")
    async with aw:
        stream = aw.backend.events()
    # Closed: iteration ends instead of hanging.
    async with asyncio.timeout(5):
        assert [event async for event in stream] == []


def test_the_postgres_event_pump_is_woken_once_per_newest_id_it_is_told() -> None:
    from afterwork.backends._pg_events import EventPump

    async def never(*args: object) -> Any:
        raise AssertionError("not read in this test")

    pump = EventPump(never, never, never, poll_interval=1.0, clock=lambda: 0.0)
    ticket = pump._wake.ticket()
    pump.poke(5)  # an enqueue's own statement told of event 5
    assert pump._wake.ticket() != ticket
    ticket = pump._wake.ticket()
    pump.poke(5)  # its notification, back from the listener: nothing new, no wake-up
    pump.poke(4)
    assert pump._wake.ticket() == ticket
    pump.poke(6)
    assert pump._wake.ticket() != ticket
    ticket = pump._wake.ticket()
    pump.poke()  # ids unknown: always read
    assert pump._wake.ticket() != ticket

"""A waiting job says why it waits (``Job.waiting_reason``), on every store.

``aw.get_job`` computes it on read from the store's limit state (pause, running jobs of the
flow group, starts of the rate group); nothing is written per claim for it.
"""

from __future__ import annotations

import pytest

from afterwork import RateLimit
from afterwork._flow import flow_limits, rate_limits
from afterwork.testing import FakeClock

from .conftest import AwFactory

pytestmark = pytest.mark.anyio


async def test_each_hold_is_named(make_aw: AwFactory, clock: FakeClock) -> None:
    aw = make_aw()

    @aw.task(concurrency=1, concurrency_key="customer")
    async def sync(customer: int) -> None: ...

    @aw.task(rate_limit=RateLimit(1, per=60.0, key="host"))
    async def call(host: str) -> None: ...

    @aw.task(debounce=5.0)
    async def reindex(doc: str) -> None: ...

    @aw.task(queue="media")
    async def transcode(video: int) -> None: ...

    async with aw:
        backend = aw.backend

        async def claim_one() -> None:
            claims = await backend.claim(
                "w",
                queues=None,
                limit=1,
                lease_ttl=600.0,
                limits=flow_limits(aw.tasks),
                rates=rate_limits(aw.tasks),
            )
            await backend.begin([c.lease for c in claims])

        held = await sync.enqueue(7)
        behind = await sync.enqueue(7)
        other_key = await sync.enqueue(8)
        await claim_one()  # the first of customer 7 runs
        assert (await aw.get_job(held.id)).waiting_reason is None  # type: ignore[union-attr]
        job = await aw.get_job(behind.id)
        assert job is not None
        assert job.waiting_reason == (
            "concurrency limit: 1 of 1 running across the fleet for customer=7"
        )
        assert job.to_dict()["waiting_reason"] == job.waiting_reason
        free = await aw.get_job(other_key.id)
        assert free is not None and free.waiting_reason is None  # waits for a worker only
        await claim_one()  # customer 8

        first = await call.enqueue("api.example")
        second = await call.enqueue("api.example")
        await claim_one()
        assert (await aw.get_job(first.id)).status.value == "running"  # type: ignore[union-attr]
        job = await aw.get_job(second.id)
        assert job is not None
        assert job.waiting_reason == (
            'rate limit: 1 starts in the last 60s for host="api.example";'
            " the next may start in 60.0s"
        )
        clock.advance(60)
        job = await aw.get_job(second.id)
        assert job is not None and job.waiting_reason is None

        doc = await reindex.options(key="doc:1").enqueue("v1")
        job = await aw.get_job(doc.id)
        assert job is not None and job.waiting_reason is not None
        assert job.waiting_reason.startswith("debounced: runs 5.0s from now")

        await aw.pause("media")
        video = await transcode.enqueue(1)
        job = await aw.get_job(video.id)
        assert job is not None
        assert (
            job.waiting_reason
            == "paused queue: 'media' is paused (it starts nothing until resumed)"
        )
        await aw.resume("media")
        job = await aw.get_job(video.id)
        assert job is not None and job.waiting_reason is None

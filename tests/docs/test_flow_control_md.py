"""docs/flow-control.md: the code shown is the code run."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from afterwork import JobStatus

pytestmark = pytest.mark.anyio


async def test_the_limits_hold_while_the_example_tasks_run() -> None:
    from examples.docs import flow_control as ex

    ex.calls.clear()
    async with ex.aw:
        for n in range(6):
            await ex.call_partner_api.enqueue(n)
            await ex.sync_customer.enqueue(n % 2)
            await ex.resize_image.enqueue(f"img{n}.png")
        async with asyncio.timeout(10):
            assert await ex.aw.drain(concurrency=10) == 18
        (customer,) = [t for t in ex.aw.tasks.values() if t.name.endswith("sync_customer")]
        jobs = [j for j in await ex.aw.list_jobs() if j.task == customer.name]
        assert {j.kwargs["customer_id"] for j in jobs} == {0, 1}  # the key, stored by name
    assert Counter(kind for kind, _ in ex.calls) == {"partner": 6, "customer": 6, "resize": 6}
    assert ex.call_partner_api.opts.concurrency == 3
    assert ex.sync_customer.opts.concurrency_key == "customer_id"
    assert ex.resize_image.opts.local_concurrency == 2


async def test_the_route_answers_201_then_200() -> None:
    from examples.docs import flow_control as ex

    async with ex.aw.lifespan(ex.app):
        transport = httpx.ASGITransport(app=ex.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = await client.post("/orders/7/invoice")
            again = await client.post("/orders/7/invoice")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()


async def test_the_pause_example() -> None:
    from examples.docs import flow_pause as ex

    async with ex.aw:
        assert await ex.maintenance_window() == ["succeeded", "video 42 done"]
        assert await ex.aw.paused_queues() == frozenset()


async def test_the_bulk_example() -> None:
    from examples.docs import flow_bulk as ex

    async with ex.aw:
        assert await ex.after_the_outage() == 3
        queued = await ex.aw.list_jobs(status=JobStatus.QUEUED)
        assert len(queued) == 3 and all(job.attempts == 0 for job in queued)

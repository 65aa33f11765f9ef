"""The PostgreSQL store's set-based worker path (``backends/_pg_batch.py``) between processes.

A finish there is computed from the job as this store last wrote it, fenced by the token:
these tests change the row from a second store (another process's view) and check that
nothing another process wrote is lost or overwritten, and that a stale holder changes
nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from afterwork import Afterwork, JobStatus
from afterwork.backends.base import NewJob, Outcome
from afterwork.job import new_job_id
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio


def new(**fields: Any) -> NewJob:
    return NewJob(id=new_job_id(), task="t", **fields)


@pytest.fixture
async def pair(postgres_url: str) -> AsyncIterator[tuple[Afterwork, Afterwork, FakeClock]]:
    clock = FakeClock()
    url = f"{postgres_url}?schema=w{uuid.uuid4().hex[:12]}"
    one, two = Afterwork(url, clock=clock), Afterwork(url, clock=clock)
    async with one, two:
        yield one, two, clock


async def test_a_cancel_asked_by_another_process_is_cleared_by_the_finish(
    pair: tuple[Afterwork, Afterwork, FakeClock],
) -> None:
    one, two, _ = pair
    (job,) = await one.backend.enqueue([new()])
    (claim,) = await one.backend.claim("w1", queues=None, limit=5, lease_ttl=10.0)
    (begun,) = await one.backend.begin([claim.lease])
    assert begun is not None and begun.attempts == 1
    asked = await two.backend.cancel(job.id)
    assert asked is not None and asked.cancel_requested
    reply = await one.backend.heartbeat([claim.lease], lease_ttl=10.0)
    assert reply.cancel == frozenset({job.id}) and reply.lost == frozenset()
    done = await one.backend.finish(claim.lease, Outcome.succeeded(7))
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == 7
    stored = await two.backend.get(job.id)
    assert stored is not None
    assert stored.status is JobStatus.SUCCEEDED and stored.result == 7
    assert not stored.cancel_requested and stored.worker is None
    assert stored.attempts == 1 and [a.outcome for a in stored.timeline] == ["succeeded"]


async def test_a_stale_holder_changes_nothing_after_another_process_took_the_job(
    pair: tuple[Afterwork, Afterwork, FakeClock],
) -> None:
    one, two, clock = pair
    (job,) = await one.backend.enqueue([new(max_attempts=3)])
    (first,) = await one.backend.claim("w1", queues=None, limit=5, lease_ttl=10.0)
    assert (await one.backend.begin([first.lease]))[0] is not None
    clock.advance(11)
    (recovered,) = await two.backend.recover_expired(max_recoveries=3)
    assert recovered.status is JobStatus.QUEUED
    (second,) = await two.backend.claim("w2", queues=None, limit=5, lease_ttl=10.0)
    assert (await two.backend.begin([second.lease]))[0] is not None
    # The first holder still remembers its lease: its writes must all be fenced out.
    assert await one.backend.begin([first.lease]) == [None]
    assert await one.backend.finish(first.lease, Outcome.succeeded("stale")) is None
    assert (await one.backend.heartbeat([first.lease], lease_ttl=10.0)).lost == {job.id}
    running = await one.backend.get(job.id)
    assert running is not None and running.status is JobStatus.RUNNING
    assert running.worker == "w2" and running.attempts == 2
    done = await two.backend.finish(second.lease, Outcome.succeeded("fresh"))
    assert done is not None and done.result == "fresh" and done.attempts == 2


async def test_a_begin_sent_again_returns_the_begun_job(
    pair: tuple[Afterwork, Afterwork, FakeClock],
) -> None:
    one, _, _ = pair
    await one.backend.enqueue([new(), new()])
    claims = await one.backend.claim("w1", queues=None, limit=5, lease_ttl=10.0)
    leases = [claim.lease for claim in claims]
    begun = await one.backend.begin(leases)
    again = await one.backend.begin(leases)  # as after a reply lost to an outage
    assert [j.attempts if j else None for j in begun] == [1, 1]
    assert [j.attempts if j else None for j in again] == [1, 1]
    assert [j.started_at for j in again if j] == [j.started_at for j in begun if j]


async def test_a_claim_takes_due_delayed_jobs_in_order_and_promotes_the_rest(
    pair: tuple[Afterwork, Afterwork, FakeClock],
) -> None:
    one, two, clock = pair
    (low,) = await one.backend.enqueue([new(priority=0)])
    (late,) = await one.backend.enqueue([new(priority=5, delay=2.0)])
    (later,) = await one.backend.enqueue([new(priority=-5, delay=2.0)])
    clock.advance(3)
    (claim,) = await two.backend.claim("w2", queues=None, limit=1, lease_ttl=10.0)
    assert claim.job.id == late.id  # due now, and first in ready order
    rest = {
        j.id: j.status
        for j in [await one.backend.get(low.id), await one.backend.get(later.id)]
        if j
    }
    assert rest == {low.id: JobStatus.QUEUED, later.id: JobStatus.QUEUED}

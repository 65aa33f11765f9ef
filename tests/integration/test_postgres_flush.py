"""The PostgreSQL store's group commit of begins and finishes (``backends/_pg_worker_path``).

A ``begin`` of several leases is one entry of the group commit (one future, no task per
lease), its results in the leases' order. A second flush goes out while one is in flight
once enough is queued behind it, but never with an entry of a job in the flush in flight.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import asyncpg
import pytest

from afterwork import Afterwork, JobStatus
from afterwork.backends.base import Lease, NewJob, Outcome
from afterwork.backends.postgres import PostgresBackend
from afterwork.job import new_job_id
from afterwork.testing import FakeClock

from ..waiting import eventually

pytestmark = pytest.mark.anyio

WAIT = 10.0  # bounded waits; the flushes take milliseconds


def new(**fields: Any) -> NewJob:
    return NewJob(id=new_job_id(), task="t", **fields)


@pytest.fixture
async def backend(postgres_url: str) -> AsyncIterator[PostgresBackend]:
    aw = Afterwork(f"{postgres_url}?schema=f{uuid.uuid4().hex[:12]}", clock=FakeClock())
    async with aw:
        assert isinstance(aw.backend, PostgresBackend)
        yield aw.backend


async def test_a_begin_of_several_leases_is_one_entry_of_the_group_commit(
    backend: PostgresBackend,
) -> None:
    jobs = await backend.enqueue([new() for _ in range(4)])
    claims = await backend.claim("w", queues=None, limit=4, lease_ttl=30.0)
    assert [c.job.id for c in claims] == [j.id for j in jobs]
    leases = [c.lease for c in claims]
    leases[2] = Lease(leases[2].job_id, "not-its-token")  # fenced out: None in its place
    before = asyncio.all_tasks()
    begin = asyncio.ensure_future(backend.begin(leases))
    await asyncio.sleep(0)  # begin queued its leases and is waiting for the flush
    made = asyncio.all_tasks() - before - {begin}
    assert len(made) == 1  # the flush's task only: no task per lease
    assert len(backend._finishes) == 4
    begun = await begin
    assert [b.id if b else None for b in begun] == [jobs[0].id, jobs[1].id, None, jobs[3].id]
    assert all(b.attempts == 1 and b.started_at is not None for b in begun if b)
    stored = await backend.get(jobs[2].id)
    assert stored is not None and stored.attempts == 0 and stored.started_at is None


async def in_flight(backend: PostgresBackend, job_id: str) -> bool:
    """Whether ``job_id``'s entry went out, alone, in a flush not back yet."""
    return not backend._finishes and job_id in backend._in_flight


async def claimed(backend: PostgresBackend, n: int) -> list[Lease]:
    jobs = await backend.enqueue([new() for _ in range(n)])
    claims = await backend.claim("w", queues=None, limit=n, lease_ttl=30.0)
    assert sorted(c.job.id for c in claims) == sorted(j.id for j in jobs)
    return [c.lease for c in claims]


async def test_a_second_flush_goes_out_while_one_is_in_flight(
    backend: PostgresBackend, postgres_url: str
) -> None:
    leases = await claimed(backend, 80)
    begun = await backend.begin(leases)
    assert all(b is not None for b in begun)
    blocker = await asyncpg.connect(postgres_url)
    try:
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute(
            f"SELECT 1 FROM {backend._s}.jobs WHERE id = $1 FOR UPDATE", leases[0].job_id
        )
        # The first flush waits for the row lock, in flight; the others' flush does not.
        stuck = asyncio.ensure_future(backend.finish(leases[0], Outcome.succeeded(0)))
        await eventually(partial(in_flight, backend, leases[0].job_id))
        rest = [backend.finish(lease, Outcome.succeeded(1)) for lease in leases[1:]]
        done = await asyncio.wait_for(asyncio.gather(*rest), WAIT)
        assert all(job is not None and job.status is JobStatus.SUCCEEDED for job in done)
        assert not stuck.done()
        await locked.rollback()
    finally:
        await blocker.close()
    job = await asyncio.wait_for(stuck, WAIT)
    assert job is not None and job.status is JobStatus.SUCCEEDED and job.result == 0


async def test_a_finish_never_goes_out_beside_its_begin_in_flight(
    backend: PostgresBackend, postgres_url: str
) -> None:
    leases = await claimed(backend, 80)
    first, others = leases[0], leases[1:]
    assert all(b is not None for b in await backend.begin(others))
    blocker = await asyncpg.connect(postgres_url)
    try:
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute(
            f"SELECT 1 FROM {backend._s}.jobs WHERE id = $1 FOR UPDATE", first.job_id
        )
        begin = asyncio.ensure_future(backend.begin([first]))
        await eventually(partial(in_flight, backend, first.job_id))
        # Its finish (the store's caller would not send it yet: the store holds it anyway)
        # stays queued while the others' flush goes out beside the begin in flight.
        finish = asyncio.ensure_future(backend.finish(first, Outcome.succeeded(0)))
        rest = [backend.finish(lease, Outcome.succeeded(1)) for lease in others]
        done = await asyncio.wait_for(asyncio.gather(*rest), WAIT)
        assert all(job is not None for job in done)
        assert [entry[0].job_id for entry in backend._finishes] == [first.job_id]
        assert not begin.done() and not finish.done()
        await locked.rollback()
    finally:
        await blocker.close()
    (started,) = await asyncio.wait_for(begin, WAIT)
    assert started is not None and started.attempts == 1
    job = await asyncio.wait_for(finish, WAIT)
    assert job is not None and job.status is JobStatus.SUCCEEDED and job.attempts == 1

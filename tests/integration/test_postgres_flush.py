"""The PostgreSQL store's group commit of begins and finishes (``backends/_pg_worker_path``).

A ``begin`` of several leases is one entry of the group commit (one future, no task per
lease), its results in the leases' order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from afterwork import Afterwork
from afterwork.backends.base import Lease, NewJob
from afterwork.backends.postgres import PostgresBackend
from afterwork.job import new_job_id
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio


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

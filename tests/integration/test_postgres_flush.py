"""The PostgreSQL store's group commit of begins and finishes (``backends/_pg_worker_path``).

A ``begin`` of several leases is one entry of the group commit (one future, no task per
lease), its results in the leases' order; the worker begins the jobs it starts together
with one such call (``base.BeginsTogether``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

import anyio
import pytest

from afterwork import Afterwork, JobStatus, Task
from afterwork.backends.base import Lease, NewJob
from afterwork.backends.postgres import PostgresBackend
from afterwork.job import Job, new_job_id
from afterwork.testing import FakeClock

from ..waiting import eventually

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


async def test_a_worker_begins_the_jobs_started_together_with_one_call(postgres_url: str) -> None:
    aw = Afterwork(f"{postgres_url}?schema=f{uuid.uuid4().hex[:12]}", poll_interval=0.05)
    gate = anyio.Event()
    waiting: list[None] = []  # the jobs at the gate

    @aw.task
    async def work() -> None:
        waiting.append(None)
        await gate.wait()

    async with aw:
        backend = aw.backend
        assert isinstance(backend, PostgresBackend)
        await run_four(aw, backend, work, gate, waiting)


async def run_four(
    aw: Afterwork,
    backend: PostgresBackend,
    work: Task[[], Coroutine[Any, Any, None]],
    gate: anyio.Event,
    waiting: list[None],
) -> None:
    jobs = [await work.enqueue() for _ in range(4)]
    calls: list[int] = []
    begin = backend.begin

    async def counted(leases: Sequence[Lease]) -> list[Job | None]:
        calls.append(len(leases))
        return await begin(leases)

    backend.begin = counted  # type: ignore[method-assign]  # counts; the store's own runs

    async def running() -> bool:
        return len(waiting) == 2

    async def done() -> bool:
        found = [await aw.get_job(job.id) for job in jobs]
        return all(job and job.status is JobStatus.SUCCEEDED for job in found)

    async with aw.worker(concurrency=2):
        await eventually(running)
        gate.set()  # both end in one loop turn: the two buffered start together
        await eventually(done)
    assert sum(calls) == 4
    assert calls == [2, 2]

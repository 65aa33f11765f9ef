"""A claim that also begins the jobs a worker starts at once (``backends/_pg_claim.py``),
on PostgreSQL: a worker stopped while its claim runs leaves no attempt, and a cancel pushed
while the claim was in flight reaches the worker once the claim is its own. What every
store whose claim begins must do is in ``tests/backends/test_claim_begin.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from afterwork import Afterwork, JobStatus
from afterwork.backends._sqlite_rows import dumps
from afterwork.backends.base import NewJob, Outcome
from afterwork.backends.postgres import PostgresBackend
from afterwork.job import JobError, new_job_id
from afterwork.testing import FakeClock

from ..waiting import eventually

pytestmark = pytest.mark.anyio


def new(**fields: Any) -> NewJob:
    return NewJob(id=new_job_id(), task="t", **fields)


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[tuple[PostgresBackend, FakeClock]]:
    clock = FakeClock()
    aw = Afterwork(f"{postgres_url}?schema=c{uuid.uuid4().hex[:12]}", clock=clock)
    async with aw:
        assert isinstance(aw.backend, PostgresBackend)
        yield aw.backend, clock


async def started_events(backend: PostgresBackend) -> list[str]:
    async with backend._conn() as conn:
        rows = await conn.fetch(
            f"SELECT job_id FROM {backend._s}.events WHERE kind = 'started' ORDER BY id"
        )
    return [row[0] for row in rows]


async def test_a_begin_of_jobs_its_claim_did_not_begin_while_others_wait_begun(
    store: tuple[PostgresBackend, FakeClock],
) -> None:
    # A busy worker holds jobs its claim began (buffered) while it begins others in the
    # usual write: that begin must not wait for, nor loop over, the ones begun ahead.
    backend, _ = store
    jobs = await backend.enqueue([new(priority=1 - n) for n in range(2)])
    first, second = await backend.claim("w", queues=None, limit=2, lease_ttl=30.0, begin=1)
    with anyio.fail_after(5):
        (begun,) = await backend.begin([second.lease])
    assert begun is not None and begun.id == jobs[1].id and begun.attempts == 1
    with anyio.fail_after(5):
        (ahead,) = await backend.begin([first.lease])
    assert ahead is not None and ahead.id == jobs[0].id and ahead.attempts == 1
    assert await started_events(backend) == [jobs[0].id, jobs[1].id]


@pytest.fixture
async def app(postgres_url: str) -> AsyncIterator[tuple[Afterwork, str]]:
    url = f"{postgres_url}?schema=c{uuid.uuid4().hex[:12]}"
    aw = Afterwork(url, lease_ttl=60.0, poll_interval=0.05)
    async with aw:
        yield aw, postgres_url


class ClaimBlocked:
    """Holds the ``paused`` table locked (every claim reads it) until released."""

    def __init__(self, url: str, backend: PostgresBackend) -> None:
        self.url, self.backend = url, backend
        self.conn: asyncpg.Connection | None = None
        self.tx: Any = None

    async def __aenter__(self) -> ClaimBlocked:
        self.conn = await asyncpg.connect(self.url)
        self.tx = self.conn.transaction()
        await self.tx.start()
        await self.conn.execute(f"LOCK TABLE {self.backend._s}.paused IN ACCESS EXCLUSIVE MODE")
        return self

    async def waiting(self) -> bool:
        """Whether a claim waits for the lock."""
        assert self.conn is not None
        async with self.backend._conn() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = $1::regclass",
                    f"{self.backend._s}.paused",
                )
            )

    async def release(self) -> None:
        if self.tx is not None:
            await self.tx.commit()
            self.tx = None

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
        assert self.conn is not None
        await self.conn.close()


async def test_a_worker_stopped_while_its_claim_runs_leaves_no_attempt(
    app: tuple[Afterwork, str],
) -> None:
    aw, url = app
    assert isinstance(aw.backend, PostgresBackend)

    @aw.task
    async def work() -> None:
        raise AssertionError("a stopped worker starts nothing")

    async with ClaimBlocked(url, aw.backend) as blocked:
        async with aw.worker(concurrency=4) as worker:
            job = await work.enqueue()
            await eventually(blocked.waiting, timeout=10, interval=0.01)
            worker.stop()
            await blocked.release()
    stored = await aw.get_job(job.id)
    assert stored is not None and stored.status is JobStatus.QUEUED
    assert stored.attempts == 0 and stored.timeline == () and stored.started_at is None


async def test_a_worker_starts_others_while_a_job_its_claim_began_is_held_back(
    app: tuple[Afterwork, str],
) -> None:
    # The idle worker's claim begins its first jobs in ready order; one held back at its
    # task's local_concurrency stays begun in the buffer while the others start.
    aw, _ = app
    release = anyio.Event()
    ran: list[str] = []

    @aw.task(local_concurrency=1, priority=5)
    async def single(n: int) -> None:
        ran.append(f"single{n}")
        await release.wait()

    @aw.task
    async def quick(n: int) -> None:
        ran.append(f"quick{n}")

    await single.enqueue(1)
    await single.enqueue(2)
    jobs = [await quick.enqueue(n) for n in range(10)]

    async def quick_done() -> bool:
        done = [await aw.get_job(job.id) for job in jobs]
        return all(j is not None and j.status is JobStatus.SUCCEEDED for j in done)

    async with aw.worker(concurrency=10):
        await eventually(quick_done, timeout=10, interval=0.02)
        assert ran.count("single2") == 0  # still held back behind single1
        release.set()

        async def all_ran() -> bool:
            return "single2" in ran

        await eventually(all_ran, timeout=10, interval=0.02)
    for job in jobs:
        stored = await aw.get_job(job.id)
        assert stored is not None and stored.attempts == 1


async def test_a_cancel_pushed_while_the_claim_runs_stops_the_job_at_once(
    app: tuple[Afterwork, str],
) -> None:
    aw, url = app
    backend = aw.backend
    assert isinstance(backend, PostgresBackend)

    @aw.task
    async def work() -> None:
        await anyio.sleep_forever()

    pushed = anyio.Event()
    backend.watch_cancels(lambda _job_id: pushed.set())
    async with ClaimBlocked(url, backend) as blocked, aw.worker(concurrency=4):
        job = await work.enqueue()
        await eventually(blocked.waiting, timeout=10, interval=0.01)
        # As a cancel committed just after the claim, pushed before its reply is read.
        async with backend._conn() as conn:
            await conn.execute("SELECT pg_notify($1, $2)", backend._channel("cancel"), job.id)
        with anyio.fail_after(10):
            await pushed.wait()
        await blocked.release()

        async def cancelled() -> bool:
            done = await aw.get_job(job.id)
            return done is not None and done.status is JobStatus.CANCELLED

        # Well before the next heartbeat (20 s): the worker was told again.
        await eventually(cancelled, timeout=10, interval=0.01)


async def test_a_flushed_finish_stores_the_encoders_text_and_its_events_in_order(
    store: tuple[PostgresBackend, FakeClock],
) -> None:
    backend, _ = store
    result = {"b": 1, "a": [1.5, "é\u0000", None, True], "n": None}
    jobs = await backend.enqueue([new(max_attempts=3), new(), new()])
    claims = await backend.claim("w", queues=None, limit=3, lease_ttl=30.0)
    assert all(job is not None for job in await backend.begin([c.lease for c in claims]))
    error = JobError.from_message("E", "boom ☃")
    done = await asyncio.gather(
        backend.finish(claims[0].lease, Outcome.retry(error, delay=5.0)),
        backend.finish(claims[1].lease, Outcome.succeeded(result)),
        backend.finish(claims[2].lease, Outcome.succeeded(None)),
    )
    assert [d.status if d else None for d in done] == [
        JobStatus.SCHEDULED,
        JobStatus.SUCCEEDED,
        JobStatus.SUCCEEDED,
    ]
    async with backend._conn() as conn:
        rows = {
            row["id"]: row
            for row in await conn.fetch(
                f"SELECT id, result, error, timeline, attempts FROM {backend._s}.jobs"
            )
        }
        kinds = await conn.fetch(
            f"SELECT kind, job_id, attempts FROM {backend._s}.events"
            " WHERE kind <> 'enqueued' ORDER BY id"
        )
    assert rows[jobs[1].id]["result"] == dumps(result)
    assert rows[jobs[2].id]["result"] is None and rows[jobs[0].id]["result"] is None
    assert rows[jobs[0].id]["error"] == dumps(error.to_dict())
    stored = [await backend.get(job.id) for job in jobs]
    assert stored[1] is not None and stored[1].result == result
    assert stored[0] is not None and stored[0].error == error
    assert [[a.outcome for a in s.timeline] if s else None for s in stored] == [
        ["retrying"],
        ["succeeded"],
        ["succeeded"],
    ]
    assert [(k["kind"], k["job_id"]) for k in kinds] == [
        *(("started", job.id) for job in jobs),
        ("retrying", jobs[0].id),
        ("succeeded", jobs[1].id),
        ("succeeded", jobs[2].id),
    ]

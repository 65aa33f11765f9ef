"""``WritesBehind.write_local``: a group of plain callables' jobs written in one go.

Each store that implements it must leave exactly the rows and events the generic path
(``start``, then ``finish`` or ``cancel``, one job at a time) leaves, be all or nothing, and
be safe to repeat (the write-behind retries a group whose write failed).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from dataclasses import replace
from typing import Any

import pytest

from afterwork import Afterwork, JobStatus
from afterwork import _lifecycle as life
from afterwork._engine.writebehind import LocalRecord, WritesBehind
from afterwork.backends.base import EventHistory, Lease, NewJob, Outcome
from afterwork.exceptions import BackendError
from afterwork.job import Job, JobError, JobEvent
from afterwork.testing import FakeClock

from .conftest import AwFactory

pytestmark = pytest.mark.anyio

WAIT = 10.0


@pytest.fixture(params=["sqlite", "redis", "redis-cluster", "postgres"])
def backend_name(request: pytest.FixtureRequest) -> str:
    """The stores that write a group at once (the others take the generic path)."""
    return str(request.param)


def plain(n: int, **options: Any) -> NewJob:
    return NewJob(
        id=uuid.uuid4().hex,
        task="app.plain",
        queue="inline",
        args=[repr(n)],
        kwargs={"who": "'ada'"},
        max_attempts=0,
        **options,
    )


OUTCOMES: list[tuple[str, Outcome | None]] = [
    ("succeeded", Outcome.succeeded({"n": 1})),
    ("failed", Outcome.failed(JobError.from_message("ValueError", "no"))),
    ("cancelled", Outcome.cancelled(JobError.from_message("afterwork.Cancelled", "asked"))),
    ("running", None),
    ("asked", None),  # still running, asked to cancel meanwhile
]


def local(
    new: NewJob,
    outcome: Outcome | None,
    *,
    at: float,
    end: float | None = None,
    cancel: bool = False,
) -> LocalRecord:
    """A record as ``WriteBehind`` keeps it: started at ``at``, ended at ``end`` (or ``at``)."""
    job = life.start_now(new, worker="web-1", now=at, lease_ttl=10.0).job
    return LocalRecord(
        new,
        "web-1",
        uuid.uuid4().hex,
        10.0,
        at,
        job,
        outcome=outcome,
        finished_at=None if outcome is None else (at if end is None else end),
        cancel_requested=cancel,
    )


async def generic(
    aw: Afterwork, clock: FakeClock, jobs: list[tuple[NewJob, Outcome | None, bool]], later: float
) -> list[str]:
    """What the write-behind does on a store without ``write_local``: each job started,
    then (``later`` seconds on) finished or asked to cancel."""
    claims = [await aw.backend.start(new, "web-1", lease_ttl=10.0) for new, _, _ in jobs]
    clock.advance(later)
    for claim, (new, outcome, cancel) in zip(claims, jobs, strict=True):
        if outcome is not None:
            await aw.backend.finish(claim.lease, outcome)
        elif cancel:
            await aw.backend.cancel(new.id)
    return [claim.token for claim in claims]


def same(job: Job | None, twin: Job | None) -> bool:
    assert job is not None and twin is not None
    return replace(job, id="x") == replace(twin, id="x")


async def collect(stream: Any, ids: set[str], count: int) -> dict[str, list[tuple[Any, ...]]]:
    seen: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    got = 0
    async with asyncio.timeout(WAIT):
        async for event in stream:
            if not isinstance(event, JobEvent) or event.job_id not in ids:
                continue
            seen[event.job_id].append(
                (event.kind, event.status, event.attempts, event.at, event.task, event.queue)
            )
            got += 1
            if got == count:
                break
    return seen


async def test_a_group_leaves_the_rows_and_events_of_the_generic_path(
    make_aw: AwFactory, clock: FakeClock
) -> None:
    aw = make_aw()
    async with aw:
        backend = aw.backend
        assert isinstance(backend, WritesBehind) and isinstance(backend, EventHistory)
        start, later = clock(), 0.25
        pairs = [(plain(n), plain(n)) for n in range(len(OUTCOMES))]
        records = [
            local(mine, outcome, at=start, end=start + later, cancel=name == "asked")
            for (mine, _), (name, outcome) in zip(pairs, OUTCOMES, strict=True)
        ]
        ids = {new.id for pair in pairs for new in pair}
        stream = backend.events()
        listening = asyncio.create_task(collect(stream, ids, 2 * 9))
        await asyncio.sleep(0)
        twins = [
            (theirs, outcome, name == "asked")
            for (_, theirs), (name, outcome) in zip(pairs, OUTCOMES, strict=True)
        ]
        tokens = await generic(aw, clock, twins, later)
        await backend.write_local(records)  # a cancel is asked when written: now, as above
        events = await listening
        await stream.aclose()
        for (mine, theirs), (name, _) in zip(pairs, OUTCOMES, strict=True):
            job, twin = await backend.get(mine.id), await backend.get(theirs.id)
            assert same(job, twin), name
            assert events[mine.id] == events[theirs.id], name
        stats = {s.queue: s for s in await aw.stats()}["inline"].counts
        assert stats[JobStatus.SUCCEEDED] == 2 and stats[JobStatus.FAILED] == 2
        assert stats[JobStatus.CANCELLED] == 2 and stats[JobStatus.RUNNING] == 4
        # The running ones are held under the record's token, as under the store's own.
        for (mine, theirs), record, token in zip(pairs[3:], records[3:], tokens[3:], strict=True):
            ended = await backend.finish(Lease(mine.id, record.token), Outcome.succeeded(None))
            twin = await backend.finish(Lease(theirs.id, token), Outcome.succeeded(None))
            assert ended is not None and ended.status is JobStatus.SUCCEEDED
            assert same(ended, twin)
        # Another process sees what was written.
        other = make_aw()
        async with other:
            for mine, _ in pairs:
                seen = await other.get_job(mine.id)
                assert same(seen, await backend.get(mine.id))


async def test_a_repeated_group_writes_nothing_twice(make_aw: AwFactory, clock: FakeClock) -> None:
    aw = make_aw()
    async with aw:
        backend = aw.backend
        assert isinstance(backend, WritesBehind) and isinstance(backend, EventHistory)
        records = [
            local(plain(n), outcome, at=clock(), cancel=name == "asked")
            for n, (name, outcome) in enumerate(OUTCOMES)
        ]
        ids = {r.new.id for r in records}
        stream = backend.events()
        listening = asyncio.create_task(collect(stream, ids, 9))
        await asyncio.sleep(0)
        await backend.write_local(records)
        first = await listening
        before = [await backend.get(r.new.id) for r in records]
        clock.advance(1)
        # A repeat (its first reply lost), then one more event to know the stream is caught up.
        await backend.write_local(records)
        marker = local(plain(99), Outcome.succeeded(None), at=clock())
        listening = asyncio.create_task(collect(stream, ids | {marker.new.id}, 2))
        await asyncio.sleep(0)
        await backend.write_local([marker])
        after = await listening
        await stream.aclose()
        assert set(after) == {marker.new.id}, after
        assert [await backend.get(r.new.id) for r in records] == before
        assert Counter(kind for evs in first.values() for kind, *_ in evs) == {
            "started": 5,
            "succeeded": 1,
            "failed": 1,
            "cancelled": 1,
            "cancel_requested": 1,
        }


# CONFIG SET reaches one node: a cluster's is left out.
@pytest.mark.parametrize("backend_name", ["sqlite", "redis", "postgres"], indirect=True)
async def test_a_group_that_cannot_be_written_writes_none_of_it(
    make_aw: AwFactory, backend_name: str, clock: FakeClock
) -> None:
    aw = make_aw()
    async with aw:
        backend = aw.backend
        assert isinstance(backend, WritesBehind)
        records = [local(plain(n), Outcome.succeeded(n), at=clock()) for n in range(3)]
        refused = await _refuse_writes(aw, backend_name, records)
        with pytest.raises(BackendError):
            await backend.write_local(records)
        for record in records:
            assert await backend.get(record.new.id) is None
        await refused()
        await backend.write_local(records)
        for record in records:
            job = await backend.get(record.new.id)
            assert job is not None and job.status is JobStatus.SUCCEEDED


async def _refuse_writes(aw: Afterwork, backend_name: str, records: list[LocalRecord]) -> Any:
    """Make the store refuse the group; returns the coroutine function that undoes it."""
    if backend_name == "redis":
        # Redis refuses every write while too few replicas are in sync: the script fails
        # at its first write.
        backend: Any = aw.backend
        await backend._command("CONFIG", "SET", "min-replicas-to-write", "1")

        async def undo() -> None:
            await backend._command("CONFIG", "SET", "min-replicas-to-write", "0")

        return undo
    # The SQL stores: a row that breaks a CHECK (a timeout must be positive) fails the
    # transaction, with the other rows of the group.
    bad = records[-1]
    records[-1] = replace(bad, new=replace(bad.new, timeout=-1.0))

    async def restore() -> None:
        records[-1] = bad

    return restore


@pytest.mark.parametrize("backend_name", ["redis", "postgres"], indirect=True)
async def test_the_write_behind_keeps_a_group_it_could_not_write(
    make_aw: AwFactory, backend_name: str
) -> None:
    aw = make_aw()
    async with aw:
        behind = aw.local_runs.inline.behind

        async def note(n: int) -> int:
            return n

        undo = await _refuse_all_writes(aw, backend_name)
        ids = [uuid.uuid4().hex for _ in range(3)]
        try:
            for n, job_id in enumerate(ids):
                done = await aw.local_runs.inline.run(
                    job_id, note, (n,), {}, name="note", is_async=True
                )
                assert done is not None and done.status is JobStatus.SUCCEEDED
            with pytest.raises(BackendError):
                await behind.flush()
            assert behind.unwritten == 3  # kept, still served from memory
            for job_id in ids:
                assert await aw.backend.get(job_id) is None
                job = await aw.get_job(job_id)
                assert job is not None and job.status is JobStatus.SUCCEEDED
        finally:
            await undo()
        await behind.flush()
        assert behind.unwritten == 0
        for n, job_id in enumerate(ids):
            job = await aw.backend.get(job_id)
            assert job is not None and job.status is JobStatus.SUCCEEDED and job.result == n


async def _refuse_all_writes(aw: Afterwork, backend_name: str) -> Any:
    """Make the store refuse every write; returns the coroutine function that undoes it."""
    backend: Any = aw.backend
    if backend_name == "redis":
        await backend._command("CONFIG", "SET", "min-replicas-to-write", "1")

        async def undo() -> None:
            await backend._command("CONFIG", "SET", "min-replicas-to-write", "0")

        return undo
    # PostgreSQL: the schema's jobs table refuses inserts while a trigger says so.
    s = backend._s
    async with backend._conn() as conn:
        await conn.execute(
            f"CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused'; END $$;"
            f" CREATE TRIGGER refuse BEFORE INSERT ON {s}.jobs"
            f" FOR EACH ROW EXECUTE FUNCTION {s}.refuse()"
        )

    async def restore() -> None:
        async with backend._conn() as conn:
            await conn.execute(f"DROP TRIGGER refuse ON {s}.jobs")

    return restore


@pytest.mark.parametrize("backend_name", ["redis", "redis-cluster"], indirect=True)
async def test_one_redis_server_takes_a_group_on_the_worker_paths_own_connection(
    make_aw: AwFactory, backend_name: str, clock: FakeClock
) -> None:
    """On one server the group's call goes on the worker path's connection (packed by
    hiredis, one timeout); a cluster keeps the client's own path. The same rows either way."""
    aw = make_aw()
    async with aw:
        backend: Any = aw.backend
        assert backend._hot_conn is None
        records = [local(plain(n), Outcome.succeeded(n), at=clock()) for n in range(3)]
        await backend.write_local(records)
        assert (backend._hot_conn is not None) is (backend_name == "redis")
        backend._hot_busy = True  # the worker's call holds it: the client's own path
        try:
            more = [local(plain(n), Outcome.succeeded(n), at=clock()) for n in range(3)]
            await backend.write_local(more)
        finally:
            backend._hot_busy = False
        for record in records + more:
            job = await backend.get(record.new.id)
            assert job is not None and job.status is JobStatus.SUCCEEDED


@pytest.mark.parametrize(
    "outcome",
    [
        *(outcome for _, outcome in OUTCOMES if outcome is not None),
        Outcome.succeeded(),
        Outcome.cancelled(),
    ],
)
def test_redis_encodes_an_ended_record_as_the_change_local_changes_computes(
    outcome: Outcome,
) -> None:
    """The usual record (ran from its start, ended for good) is encoded directly, without
    building its jobs: the same entry and timeline as from ``local_changes``' change."""
    from afterwork._engine.writebehind import local_changes
    from afterwork.backends._redis_local import _change, _ended_entry
    from afterwork.backends._redis_scripts import OWNED, fmt

    record = local(plain(1), outcome, at=1_700_000_000.1234567, end=1_700_000_000.3456789)
    assert record.finished_at is not None
    _, change = local_changes(record, now=1_700_000_001.0, exact=fmt)
    assert change is not None
    expected = _change(OWNED["finish"], change, record.finished_at)
    entry, timeline = _ended_entry(record, record.finished_at)
    assert entry == expected
    assert list(entry["set"]) == list(expected["set"])
    assert timeline == change.job.timeline

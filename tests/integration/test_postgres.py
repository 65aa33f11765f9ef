"""What is PostgreSQL's own: migrations, enqueue in the app's transaction, a server restart.

The semantics every store shares run on PostgreSQL in ``tests/backends`` (conformance,
model, events, channels…); these tests cover what only this store has.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from typer.testing import CliRunner, Result

from afterwork import Afterwork, JobStatus
from afterwork.backends import _pg_enqueue_path, from_url
from afterwork.backends._pg_schema import SCHEMA_VERSION
from afterwork.backends.base import NewJob
from afterwork.backends.postgres import PostgresBackend
from afterwork.cli import app as cli
from afterwork.exceptions import BackendError, BackendUnavailable, EnqueueError, SchemaVersionError
from afterwork.job import new_job_id

from ..pg_server import PostgresServer
from ..waiting import eventually

pytestmark = pytest.mark.anyio


def schema_url(postgres_url: str, **query: str) -> str:
    options = {"schema": f"p{uuid.uuid4().hex[:12]}", **query}
    return postgres_url + "?" + "&".join(f"{k}={v}" for k, v in options.items())


async def db(*args: str) -> Result:
    """``afterwork db …`` (it runs its own event loop: in a thread of its own)."""
    return await anyio.to_thread.run_sync(lambda: CliRunner().invoke(cli, ["db", *args]))


def new(task: str = "t") -> NewJob:
    return NewJob(id=new_job_id(), task=task)


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresBackend]:
    backend = from_url(schema_url(postgres_url))
    assert isinstance(backend, PostgresBackend)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.aclose()


# -- migrations --------------------------------------------------------------------------


async def test_a_fresh_schema_is_created_then_opened_without_migrating_again(
    postgres_url: str,
) -> None:
    url = schema_url(postgres_url)
    backend = from_url(url)
    assert isinstance(backend, PostgresBackend)
    assert await backend.schema_version() is None
    await backend.open()
    await backend.aclose()
    assert await backend.schema_version() == SCHEMA_VERSION
    assert await backend.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)  # idempotent
    async with Afterwork(url) as aw:  # a second open finds the store as it is
        job = await aw.backend.enqueue([new()])
        assert (await aw.get_job(job[0].id)) is not None


async def test_a_version_1_store_is_migrated_on_open_and_keeps_its_jobs(
    postgres_url: str,
) -> None:
    url = schema_url(postgres_url)
    backend = from_url(url)
    assert isinstance(backend, PostgresBackend)
    await backend.open()
    (job,) = await backend.enqueue([new()])
    await backend.aclose()
    conn = await asyncpg.connect(postgres_url)
    try:  # back to version 1: without the tables version 2 added, the column of version 3
        s = f'"{backend.schema}"'
        await conn.execute(f"DROP TABLE {s}.leases, {s}.history, {s}.starts")
        await conn.execute(f"ALTER TABLE {s}.jobs DROP COLUMN headers")
        await conn.execute(f"UPDATE {s}.meta SET value = '1' WHERE name = 'schema_version'")
    finally:
        await conn.close()
    assert await backend.schema_version() == 1
    async with Afterwork(url) as aw:
        assert await backend.schema_version() == SCHEMA_VERSION == 4
        assert await aw.get_job(job.id) is not None
        store = aw.backend
        assert isinstance(store, PostgresBackend)
        assert await store.acquire_lease("one", "me", ttl=10.0) is not None
        assert await store.read_history(since=0.0, until=1e12) == []


async def test_a_version_3_store_loses_the_queue_and_task_indexes_and_still_lists_by_them(
    postgres_url: str,
) -> None:
    url = schema_url(postgres_url)
    backend = from_url(url)
    assert isinstance(backend, PostgresBackend)
    await backend.open()
    (job,) = await backend.enqueue([new("listed")])
    await backend.aclose()
    s = f'"{backend.schema}"'

    async def indexes() -> set[str]:
        conn = await asyncpg.connect(postgres_url)
        try:
            rows = await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 'jobs'",
                backend.schema,
            )
        finally:
            await conn.close()
        return {row[0] for row in rows}

    fresh = await indexes()
    assert not fresh & {"jobs_queue", "jobs_task"}  # a new store never makes them
    conn = await asyncpg.connect(postgres_url)
    try:  # back to version 3, with its two listing indexes
        await conn.execute(f"CREATE INDEX jobs_queue ON {s}.jobs (queue, id)")
        await conn.execute(f"CREATE INDEX jobs_task ON {s}.jobs (task, id)")
        await conn.execute(f"UPDATE {s}.meta SET value = '3' WHERE name = 'schema_version'")
    finally:
        await conn.close()
    assert await backend.schema_version() == 3
    async with Afterwork(url) as aw:
        assert await backend.schema_version() == SCHEMA_VERSION == 4
        assert await indexes() == fresh
        assert [j.id for j in await aw.list_jobs(task="listed")] == [job.id]
        assert [j.id for j in await aw.list_jobs(queue="default", task="listed")] == [job.id]
        assert await aw.list_jobs(task="other") == []


async def test_a_store_migrated_by_a_newer_afterwork_is_refused(postgres_url: str) -> None:
    url = schema_url(postgres_url)
    backend = from_url(url)
    assert isinstance(backend, PostgresBackend)
    await backend.migrate()
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(
            f"UPDATE {backend.schema}.meta SET value = '99' WHERE name = 'schema_version'"
        )
    finally:
        await conn.close()
    with pytest.raises(SchemaVersionError, match="newer afterwork"):
        async with Afterwork(url):
            pass
    result = await db("check", "--url", url)
    assert result.exit_code == 2 and "newer afterwork" in result.output


async def test_migrate_false_refuses_an_unmigrated_store_then_opens_a_migrated_one(
    postgres_url: str,
) -> None:
    url = schema_url(postgres_url, migrate="false")
    with pytest.raises(BackendError, match="afterwork db migrate"):
        async with Afterwork(url):
            pass
    assert (await db("check", "--url", url)).exit_code == 1
    migrated = await db("migrate", "--url", url)
    assert migrated.exit_code == 0, migrated.output
    assert f"to {SCHEMA_VERSION}" in migrated.output
    again = await db("migrate", "--url", url)
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert (await db("check", "--url", url)).exit_code == 0
    async with Afterwork(url) as aw:
        assert await aw.backend.enqueue([new()])


def test_the_db_commands_are_for_postgres_urls_only(tmp_path: object) -> None:
    result = CliRunner().invoke(cli, ["db", "check", "--url", "memory://"])
    assert result.exit_code == 2 and "PostgreSQL" in result.output


# -- enqueue inside the app's transaction ---------------------------------------------------


async def test_enqueue_in_an_asyncpg_transaction_exists_only_if_it_commits(
    store: PostgresBackend, postgres_url: str
) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        async with conn.transaction():
            (job,) = await store.enqueue_in(conn, [new()])
            assert job.status is JobStatus.QUEUED
            assert await store.get(job.id) is None  # invisible until the commit
            assert await store.claim("w", queues=None, limit=5, lease_ttl=10) == []
        assert await store.get(job.id) is not None
        (claim,) = await store.claim("w", queues=None, limit=5, lease_ttl=10)
        assert claim.job.id == job.id

        transaction = conn.transaction()
        await transaction.start()
        (gone,) = await store.enqueue_in(conn, [new()])
        await transaction.rollback()
        assert await store.get(gone.id) is None  # rolled back with the app's rows
        # Outside a transaction, the enqueue is its own.
        (alone,) = await store.enqueue_in(conn, [new()])
        assert await store.get(alone.id) is not None
    finally:
        await conn.close()


# -- enqueue: one statement, concurrent callers share a commit ---------------------------


async def transactions(store: PostgresBackend, table: str = "jobs") -> list[int]:
    """The transaction that wrote each row of ``table``, in row order."""
    async with store._conn() as conn:
        rows = await conn.fetch(f"SELECT xmin::text::bigint FROM {store._s}.{table} ORDER BY id")
    return [int(row[0]) for row in rows]


async def test_concurrent_enqueues_share_one_commit_each_getting_its_own_jobs(
    store: PostgresBackend,
) -> None:
    jobs = [new() for _ in range(64)]
    returned = await asyncio.gather(*(store.enqueue([job]) for job in jobs))
    assert [got.id for (got,) in returned] == [job.id for job in jobs]
    assert all(got.status is JobStatus.QUEUED for (got,) in returned)
    assert len(set(await transactions(store))) == 1  # one commit for the 64 callers
    for job in jobs:
        assert await store.get(job.id) is not None


async def test_enqueues_one_after_another_reuse_one_pool_connection_given_back_on_close(
    store: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = store._pool
    assert pool is not None
    used: list[object] = []  # a pool hands out a new proxy object per acquire
    insert_on = store._insert_on

    async def spied(conn: Any, *args: Any, **kwargs: Any) -> Any:
        used.append(conn)
        return await insert_on(conn, *args, **kwargs)

    monkeypatch.setattr(store, "_insert_on", spied)
    for _ in range(5):
        await store.enqueue([new()])
    assert len(used) == 5 and len({id(conn) for conn in used}) == 1  # kept, not re-acquired
    # A statement that fails gives its connection back instead of keeping it.
    with pytest.raises(BackendError):
        await store.enqueue([NewJob(id=new_job_id(), task="t", timeout=-1.0)])
    assert store._kept is None
    await store.enqueue([new()])
    assert used[-1] is not used[0] and store._kept is not None
    with anyio.fail_after(1.0):  # the pool's close does not wait for the kept connection
        await store.aclose()
    assert store._kept is None and pool._closed


async def test_the_kept_connection_has_one_timer_for_a_run_and_goes_back_once_unused(
    store: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep_for = 60.0  # no timer fires by itself during the test, however slow the machine
    monkeypatch.setattr(_pg_enqueue_path, "_KEEP_FOR", keep_for)
    await store.enqueue([new()])
    timer = store._letting_go
    assert store._kept is not None and timer is not None
    for _ in range(3):
        await store.enqueue([new()])
    assert store._letting_go is timer  # not set and cancelled again per statement
    timer.cancel()
    store._let_go()  # used within the last _KEEP_FOR: kept, looked at again then
    assert store._kept is not None and store._letting_go is not None
    assert store._letting_go.when() == pytest.approx(store._kept_at + keep_for)
    store._letting_go.cancel()
    store._kept_at -= keep_for  # unused for _KEEP_FOR: given back
    store._let_go()
    assert store._kept is None and store._letting_go is None
    assert store._giving_back is not None
    await store._giving_back
    await store.enqueue([new()])  # taken from the pool again, kept again
    assert store._kept is not None and store._letting_go is not None


async def test_a_pool_of_one_connection_keeps_none_for_enqueues(postgres_url: str) -> None:
    store = from_url(schema_url(postgres_url, pool_size="1"))
    assert isinstance(store, PostgresBackend)
    await store.open()
    try:
        await store.enqueue([new()])
        assert store._kept is None  # the only connection is free for the next caller
    finally:
        await store.aclose()


async def test_an_enqueue_alone_is_written_on_its_callers_task_and_the_next_ones_after_it(
    store: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers: list[asyncio.Task[Any] | None] = []
    writing = asyncio.Event()
    insert_now = store._insert_now

    async def spied(groups: Any) -> Any:
        writers.append(asyncio.current_task())
        writing.set()
        return await insert_now(groups)

    monkeypatch.setattr(store, "_insert_now", spied)
    for _ in range(3):  # one at a time: no task of its own per call
        await store.enqueue([new()])
    assert writers == [asyncio.current_task()] * 3
    writers.clear()
    writing.clear()
    # Calls made while a lone call's statement runs wait for it, then share one statement;
    # the lone caller cancelled meanwhile takes none of them with it.
    first = asyncio.ensure_future(store.enqueue([new()]))
    await writing.wait()
    later = [new() for _ in range(5)]
    waiting = asyncio.gather(*(store.enqueue([job]) for job in later))
    await asyncio.sleep(0)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert [got.id for (got,) in await waiting] == [job.id for job in later]
    assert len(writers) == 2 and writers[1] is not writers[0]
    for job in later:
        assert await store.get(job.id) is not None


async def test_a_batch_is_one_transaction_with_its_events_in_the_jobs_order(
    store: PostgresBackend,
) -> None:
    jobs = [NewJob(id=new_job_id(), task="t", delay=5.0 if i % 3 else 0.0) for i in range(300)]
    created = await store.enqueue(jobs)
    assert [job.id for job in created] == [job.id for job in jobs]
    assert [job.status for job in created] == [
        JobStatus.SCHEDULED if i % 3 else JobStatus.QUEUED for i in range(300)
    ]
    async with store._conn() as conn:
        events = await conn.fetch(
            f"SELECT job_id, kind, status, xmin::text::bigint AS tx FROM {store._s}.events"
            " ORDER BY id"
        )
    assert [row["job_id"] for row in events] == [job.id for job in jobs]
    assert {row["kind"] for row in events} == {"enqueued"}
    assert [row["status"] for row in events] == [job.status.value for job in created]
    assert {row["tx"] for row in events} == set(await transactions(store))  # one, the same


async def test_enqueue_many_returns_bound_jobs_that_say_whether_they_were_created(
    postgres_url: str,
) -> None:
    # The store builds the jobs it returns already bound (``job_owner``); one that met a
    # key's holder is the holder, told ``created_now=False``.
    async with Afterwork(schema_url(postgres_url)) as aw:

        @aw.task
        async def noop() -> None:
            pass

        first = await aw.enqueue_many(
            [aw.build_job(noop, (), {}, {"key": "k"}), aw.build_job(noop, (), {}, {})]
        )
        (again,) = await aw.enqueue_many([aw.build_job(noop, (), {}, {"key": "k"})])
        assert [job.created_now for job in first] == [True, True]
        assert again.created_now is False and again.id == first[0].id
        for job in (*first, again):
            assert (await job.refresh()).id == job.id  # bound to aw
        fetched = await aw.get_job(first[0].id)
        assert fetched is not None and fetched.created_now is None and fetched == first[0]
        async with aw.backend._conn() as conn:  # type: ignore[attr-defined]
            (job,) = await aw.enqueue_many([aw.build_job(noop, (), {}, {})], connection=conn)
        assert job.created_now is True and (await job.refresh()).id == job.id


def _stored(job: object) -> tuple[object, ...]:
    names = ("id", "task", "queue", "status", "args", "kwargs", "priority", "max_attempts")
    more = ("key", "created_at", "run_at", "timeout", "result_ttl", "headers")
    return tuple(getattr(job, name) for name in (*names, *more))


@pytest.mark.parametrize(
    "vary",
    [None, "task", "queue", "args", "kwargs", "priority", "max_attempts", "key", "delay",
     "timeout", "result_ttl", "headers"],
)  # fmt: skip
@pytest.mark.parametrize("size", [3, 40])  # 40: the jobs returned are made while it runs
async def test_a_batch_stores_each_column_shared_or_not(
    store: PostgresBackend, vary: str | None, size: int
) -> None:
    # A value every job shares goes once, a column of NULLs as an empty array: either way
    # each job is stored as given, and returned as stored.
    values: dict[str, list[Any]] = {
        "task": ["t", "u", "v"],
        "queue": ["default", "q1", "q2"],
        "args": [[1, "a"], [], [None]],
        "kwargs": [{"k": 1}, {}, {"é": "ü"}],
        "priority": [0, 5, -3],
        "max_attempts": [1, 3, 0],
        "key": [None, *(f"k{i}" for i in range(1, size))],  # one each: none meets another
        "delay": [0.0, 5.0, 60.0],
        "timeout": [None, 1.5, 30.0],
        "result_ttl": [10.0, None, 0.0],
        "headers": [{"h": "1"}, {}, {"a": "b", "c": "d"}],
    }
    jobs = [
        NewJob(
            id=new_job_id(),
            **{
                name: column[(i if name == "key" else i % 3) if name == vary else 0]
                for name, column in values.items()
            },
        )
        for i in range(size)
    ]
    made = await store.enqueue(jobs)
    assert [job.id for job in made] == [job.id for job in jobs]
    for new_job, job in zip(jobs, made, strict=True):
        assert (job.task, job.queue, job.args, job.kwargs) == (
            new_job.task, new_job.queue, new_job.args, new_job.kwargs
        )  # fmt: skip
        assert (job.priority, job.max_attempts, job.key, job.headers) == (
            new_job.priority, new_job.max_attempts, new_job.key, new_job.headers
        )  # fmt: skip
        assert (job.timeout, job.result_ttl) == (new_job.timeout, new_job.result_ttl)
        assert job.run_at == job.created_at + new_job.delay
        assert job.status is (JobStatus.SCHEDULED if new_job.delay else JobStatus.QUEUED)
        stored = await store.get(job.id)
        assert stored is not None and _stored(stored) == _stored(job)


@pytest.mark.parametrize("more", [0, 40])
async def test_a_keyless_batch_meeting_a_stored_id_returns_it_and_stores_the_rest(
    store: PostgresBackend, more: int
) -> None:
    # Keyless batches go without ON CONFLICT first: an id already stored (a retried
    # enqueue) fails that statement whole, and the one with ON CONFLICT settles it.
    first, second, third = new(), new(), new()
    others = [new() for _ in range(more)]
    (stored,) = await store.enqueue([first])
    made = await store.enqueue([second, first, third, second, *others])
    ids = [second.id, first.id, third.id, second.id, *(job.id for job in others)]
    assert [job.id for job in made] == ids
    assert made[1] == stored and made[1].created_at == stored.created_at  # the stored one
    assert await store.get(third.id) is not None
    async with store._conn() as conn:
        events = await conn.fetch(f"SELECT job_id FROM {store._s}.events ORDER BY id")
    expected = [first.id, second.id, third.id, *(job.id for job in others)]
    assert [row["job_id"] for row in events] == expected


async def test_an_enqueue_cancelled_while_its_statement_runs_leaves_the_store_working(
    store: PostgresBackend,
) -> None:
    # Cancelled at a few points, before its statement or while it runs and the jobs are
    # made beside it: the store goes on. Through ``enqueue_in`` the statement runs on
    # the caller's task: it is cancelled too and waited for, and the connection is idle.
    for turns in range(6):
        pending = asyncio.ensure_future(store.enqueue([new() for _ in range(200)]))
        for _ in range(turns):
            await asyncio.sleep(0)
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
    async with store._conn() as conn:
        for turns in range(8):
            pending = asyncio.ensure_future(store.enqueue_in(conn, [new() for _ in range(200)]))
            for _ in range(turns):
                await asyncio.sleep(0)
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
            assert await conn.fetchval("SELECT 1") == 1 and not conn.is_in_transaction()
    jobs = [new() for _ in range(200)]
    made = await store.enqueue(jobs)
    assert [job.id for job in made] == [job.id for job in jobs]
    for job in jobs:
        assert await store.get(job.id) is not None


async def test_a_batch_with_one_bad_job_stores_none_of_it(store: PostgresBackend) -> None:
    jobs = [new(), NewJob(id=new_job_id(), task="t", timeout=-1.0), new()]  # CHECK refuses
    with pytest.raises(BackendError):
        await store.enqueue(jobs)
    for job in jobs:
        assert await store.get(job.id) is None


async def test_one_bad_job_fails_only_its_caller_in_a_shared_commit(
    store: PostgresBackend,
) -> None:
    good, other = new(), new()
    bad = NewJob(id=new_job_id(), task="t", timeout=-1.0)  # the table's CHECK refuses it
    results = await asyncio.gather(
        store.enqueue([good]), store.enqueue([bad]), store.enqueue([other]), return_exceptions=True
    )
    assert isinstance(results[1], BackendError)
    assert [job.id for job in results[0]] == [good.id]  # type: ignore[union-attr]
    assert [job.id for job in results[2]] == [other.id]  # type: ignore[union-attr]
    assert await store.get(good.id) is not None
    assert await store.get(other.id) is not None
    assert await store.get(bad.id) is None


async def test_one_key_twice_in_a_shared_commit_makes_one_job(store: PostgresBackend) -> None:
    (held,) = await store.enqueue([NewJob(id=new_job_id(), task="t", key="held")])
    first = NewJob(id=new_job_id(), task="t", key="k")
    second = NewJob(id=new_job_id(), task="t", key="k")
    third = NewJob(id=new_job_id(), task="t", key="held")
    a, b, c = await asyncio.gather(*(store.enqueue([job]) for job in (first, second, third)))
    assert a[0].id == first.id
    assert b[0].id == first.id  # the second met the first, written by the same statement
    assert c[0].id == held.id
    assert await store.get(second.id) is None
    assert await store.get(third.id) is None
    # Within one call too, and an id given twice is one job.
    again = new()
    made = await store.enqueue([again, NewJob(id=new_job_id(), task="t", key="k"), again])
    assert [job.id for job in made] == [again.id, first.id, again.id]


# -- one job: its own statement, scalar parameters --------------------------------------


def _every_option(delay: float) -> NewJob:
    return NewJob(
        id=new_job_id(), task="every", queue="q1", args=[1, "a", None], kwargs={"é": "ü"},
        priority=-3, max_attempts=4, key=f"k{uuid.uuid4().hex}", delay=delay, timeout=1.5,
        result_ttl=30.0, headers={"a": "b", "c": "d"},
    )  # fmt: skip


def _spy_single(store: PostgresBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids each single-job statement wrote (fails where there is none)."""
    sent: list[str] = []
    insert_one_on = store._insert_one_on

    async def spied(conn: Any, job: NewJob, now: float, *, alone: bool) -> Any:
        sent.append(job.id)
        return await insert_one_on(conn, job, now, alone=alone)

    monkeypatch.setattr(store, "_insert_one_on", spied)
    return sent


async def _rows(store: PostgresBackend, job_id: str) -> tuple[list[Any], list[Any]]:
    """The stored row of ``job_id`` but for its id and times, and its events' columns."""
    async with store._conn() as conn:
        row = await conn.fetchrow(f"SELECT * FROM {store._s}.jobs WHERE id = $1", job_id)
        events = await conn.fetch(
            f"SELECT kind, task, queue, status, attempts, at = $2 AS at_created"
            f" FROM {store._s}.events WHERE job_id = $1 ORDER BY id",
            job_id,
            row["created_at"],
        )
    times = ("id", "seq", "key", "created_at", "run_at", "due_ms")
    stored = [value for name, value in row.items() if name not in times]
    return [*stored, row["run_at"] - row["created_at"]], [tuple(e) for e in events]


@pytest.mark.parametrize("delay", [0.0, 60.0])
async def test_one_job_with_every_option_is_stored_as_the_batch_statement_stores_it(
    store: PostgresBackend, monkeypatch: pytest.MonkeyPatch, delay: float
) -> None:
    sent = _spy_single(store, monkeypatch)
    one, in_batch = _every_option(delay), _every_option(delay)
    (made,) = await store.enqueue([one])
    made_in_batch, _ = await store.enqueue([in_batch, new()])
    assert sent == [one.id]  # the batch went through the batch statement
    assert made.status is (JobStatus.SCHEDULED if delay else JobStatus.QUEUED)
    stored = await store.get(one.id)
    assert stored is not None and _stored(stored) == _stored(made)
    assert await _rows(store, one.id) == await _rows(store, in_batch.id)
    assert _stored(made)[1:8] == _stored(made_in_batch)[1:8]  # but for the id and key
    assert _stored(made)[11:] == _stored(made_in_batch)[11:]  # timeout, result_ttl, headers
    assert (made.key, made_in_batch.key) == (one.key, in_batch.key)


@pytest.mark.parametrize("transactional", [False, True])
async def test_one_keyed_job_meeting_its_keys_holder_returns_the_holder(
    store: PostgresBackend, monkeypatch: pytest.MonkeyPatch, postgres_url: str, transactional: bool
) -> None:
    sent = _spy_single(store, monkeypatch)
    (held,) = await store.enqueue([NewJob(id=new_job_id(), task="t", key="k")])
    second = NewJob(id=new_job_id(), task="t", key="k")
    if transactional:
        conn = await asyncpg.connect(postgres_url)
        try:
            async with conn.transaction():
                (met,) = await store.enqueue_in(conn, [second])
        finally:
            await conn.close()
    else:
        (met,) = await store.enqueue([second])
    assert sent == [held.id, second.id]
    assert met.id == held.id and met.created_at == held.created_at
    assert await store.get(second.id) is None
    assert (await _rows(store, held.id))[1] == [("enqueued", "t", "default", "queued", 0, True)]
    assert [row[1] for row in await _rows_of_events(store)] == [held.id]  # none for second


async def test_one_keyless_job_whose_id_is_stored_returns_the_stored_job(
    store: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a key, the statement goes without ON CONFLICT first (as a keyless batch):
    # the id already stored (a retried enqueue) fails it, the one with ON CONFLICT settles.
    sent = _spy_single(store, monkeypatch)
    job = new()
    (stored,) = await store.enqueue([job])
    (again,) = await store.enqueue([job])
    assert sent == [job.id, job.id]
    assert again == stored and again.created_at == stored.created_at
    assert len((await _rows(store, job.id))[1]) == 1


async def test_one_job_enqueued_in_a_transaction_is_written_and_announced_at_its_commit(
    store: PostgresBackend, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    sent = _spy_single(store, monkeypatch)
    notes: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(postgres_url)
    conn = await asyncpg.connect(postgres_url)
    try:
        await listener.add_listener(store._channel("work"), lambda *a: notes.put_nowait(a[3]))
        transaction = conn.transaction()
        await transaction.start()
        (gone,) = await store.enqueue_in(conn, [new()])
        await transaction.rollback()
        assert await store.get(gone.id) is None
        assert (await _rows_of_events(store)) == []  # its event rolled back with it
        async with conn.transaction():
            (kept,) = await store.enqueue_in(conn, [_every_option(0.0)])
            assert await store.get(kept.id) is None  # invisible until the commit
        stored = await store.get(kept.id)
        assert stored is not None and _stored(stored) == _stored(kept)
        (event,) = await _rows_of_events(store)
        with anyio.fail_after(10):
            note = await notes.get()
        assert (event[1], note) == (kept.id, str(event[0]))  # the rolled back one: no note
        assert notes.empty()
        assert sent == [gone.id, kept.id]
    finally:
        await conn.close()
        await listener.close()


async def _rows_of_events(store: PostgresBackend) -> list[tuple[Any, ...]]:
    async with store._conn() as conn:
        rows = await conn.fetch(f"SELECT id, job_id FROM {store._s}.events ORDER BY id")
    return [tuple(row) for row in rows]


async def test_an_enqueue_elsewhere_moves_an_idle_event_pump_and_wakes_a_listening_one(
    postgres_url: str,
) -> None:
    url = schema_url(postgres_url)
    reader = from_url(f"{url}&event_poll_interval=60")  # only notifications move its pump
    writer = from_url(url)
    assert isinstance(reader, PostgresBackend)
    await reader.open()
    await writer.open()
    try:
        (before,) = await writer.enqueue([new()])

        async def moved() -> bool:  # nobody listens: the notification alone moves it
            async with reader._conn() as conn:
                newest = await conn.fetchval(f"SELECT max(id) FROM {reader._s}.events")
            return bool(reader._pump.cursor >= newest)

        await eventually(moved)
        stream = reader.events()
        (after,) = await writer.enqueue([new()])
        with anyio.fail_after(10):
            event = await anext(aiter(stream))
        assert (event.job_id, event.kind) == (after.id, "enqueued")  # not ``before``'s
        await stream.aclose()
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_workers_are_woken_by_the_commit(postgres_url: str) -> None:
    url = schema_url(postgres_url)
    waiter = from_url(f"{url}&poll_interval=30&max_poll_interval=30")
    writer = from_url(url)
    assert isinstance(writer, PostgresBackend)
    assert isinstance(waiter, PostgresBackend)
    await writer.open()
    await waiter.open()
    conn = await asyncpg.connect(postgres_url)
    try:
        async with anyio.create_task_group() as group:
            woke = anyio.Event()

            async def wait() -> None:
                await waiter.wait_for_work(None, 30)  # polls every 30 s: only NOTIFY wakes it
                woke.set()

            async def idle() -> bool:  # the waiter found nothing and waits
                return bool(await waiter.due_or_running() == 0)

            await eventually(idle)
            group.start_soon(wait)
            async with conn.transaction():
                await writer.enqueue_in(conn, [new()])
            with anyio.fail_after(10):
                await woke.wait()
    finally:
        await conn.close()
        await waiter.aclose()
        await writer.aclose()


async def test_enqueue_in_a_sqlalchemy_session(store: PostgresBackend, postgres_url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(postgres_url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with AsyncSession(engine) as session:
            (job,) = await store.enqueue_in(session, [new()])
            assert (await session.execute(text("SELECT 1"))).scalar() == 1
            assert await store.get(job.id) is None
            await session.commit()
        assert await store.get(job.id) is not None

        async with AsyncSession(engine) as session:
            (gone,) = await store.enqueue_in(session, [new()])
            await session.rollback()
        assert await store.get(gone.id) is None

        async with engine.connect() as connection:
            (kept,) = await store.enqueue_in(connection, [new()])
            await connection.commit()
        assert await store.get(kept.id) is not None
    finally:
        await engine.dispose()


async def test_enqueue_in_refuses_another_database_and_a_closed_connection(
    store: PostgresBackend, postgres_url: str
) -> None:
    admin = await asyncpg.connect(postgres_url)
    name = f"other_{uuid.uuid4().hex[:8]}"
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        other = await asyncpg.connect(postgres_url.rsplit("/", 1)[0] + f"/{name}")
        try:
            with pytest.raises(EnqueueError, match="another database"):
                await store.enqueue_in(other, [new()])
        finally:
            await other.close()
        with pytest.raises(EnqueueError, match="closed"):
            await store.enqueue_in(other, [new()])
        with pytest.raises(EnqueueError, match="asyncpg"):
            await store.enqueue_in(object(), [new()])
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.close()


async def test_a_cancel_reaches_the_running_process_at_once(postgres_url: str) -> None:
    url = schema_url(postgres_url)
    worker, client = from_url(url), from_url(url)
    await worker.open()
    await client.open()
    try:
        asked = anyio.Event()
        seen: list[str] = []

        def on_cancel(job_id: str) -> None:
            seen.append(job_id)
            asked.set()

        worker.watch_cancels(on_cancel)  # type: ignore[attr-defined]
        (job,) = await client.enqueue([new()])
        await worker.claim("w", queues=None, limit=1, lease_ttl=60)
        await client.cancel(job.id)
        with anyio.fail_after(10):
            await asked.wait()
        assert seen == [job.id]
    finally:
        await worker.aclose()
        await client.aclose()


# -- a server restart mid-drain -----------------------------------------------------------


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    pg = PostgresServer()
    pg.start()
    try:
        yield pg
    finally:
        pg.remove()


async def test_a_server_restart_mid_drain_gives_typed_errors_then_work_resumes(
    server: PostgresServer,
) -> None:
    aw = Afterwork(
        f"{server.url}?connect_timeout=2&acquire_timeout=2",
        poll_interval=0.05,
        heartbeat_interval=0.2,
        reaper_interval=0.2,
    )
    runs: Counter[int] = Counter()
    half = anyio.Event()

    @aw.task
    async def work(n: int) -> int:
        runs[n] += 1
        if len(runs) >= 50:
            half.set()
        return n

    async with aw:
        jobs = await aw.enqueue_many([aw.build_job(work, (n,), {}, {}) for n in range(200)])
        async with aw.worker(concurrency=8):
            with anyio.fail_after(30):
                await half.wait()
            server.stop()  # a fast shutdown: every connection is cut
            with pytest.raises(BackendUnavailable):
                await aw.backend.get(jobs[0].id)
            server.start()

            async def drained() -> bool:
                try:
                    return bool(await aw.backend.due_or_running() == 0)  # type: ignore[attr-defined]
                except BackendUnavailable:
                    return False

            # Outcomes that could not be written are retried (fenced), not left to expire.
            await eventually(drained, timeout=20, interval=0.05)
        for job in jobs:
            done = await aw.get_job(job.id)
            assert done is not None and done.status is JobStatus.SUCCEEDED, done
    assert sorted(runs) == list(range(200))  # every job ran (one may run again: at least once)


# -- least privilege -------------------------------------------------------------------------


async def test_a_role_with_the_documented_grants_runs_the_store(postgres_url: str) -> None:
    url = schema_url(postgres_url)
    owner = from_url(url)
    assert isinstance(owner, PostgresBackend)
    await owner.migrate()  # by a role that may create the schema
    role = f"app_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        s = owner.schema
        # The grants of docs/postgres.md, "Roles".
        await admin.execute(f"GRANT USAGE ON SCHEMA {s} TO {role}")
        await admin.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {role}"
        )
        await admin.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {role}")
        limited = url.replace("postgres@", f"{role}@", 1)
        aw = Afterwork(limited)

        @aw.task
        async def double(n: int) -> int:
            return 2 * n

        async with aw:
            job = await double.enqueue(21)
            await aw.drain()
            done = await aw.get_job(job.id)
            assert done is not None and done.result == 42
            assert await aw.purge(older_than=0) == 1
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


# -- a worker process SIGKILLed mid-drain ------------------------------------------------------


@pytest.mark.chaos
async def test_sigkill_a_worker_process_mid_drain_loses_nothing_and_completes_nothing_twice(
    postgres_url: str, tmp_path: Path
) -> None:
    from .redis_chaos_jobs import chaos as chaos_task
    from .test_redis_chaos import Fleet, until

    url = schema_url(postgres_url)
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    fleet = Fleet(url, ledger)
    aw = Afterwork(url)
    aw.register(chaos_task.func, name="chaos")
    try:
        async with aw:
            task = aw.get_task("chaos")
            ids = [(await task.enqueue(n, 0.3)).id for n in range(40)]
            victim = fleet.spawn()
            fleet.spawn()

            def victim_busy() -> bool:
                records = [r for r in fleet.records() if r["pid"] == victim.pid]
                starts = {(r["job"], r["attempt"]) for r in records if r["ev"] == "start"}
                ends = {(r["job"], r["attempt"]) for r in records if r["ev"] == "end"}
                return len(starts) >= 3 and bool(starts - ends)

            await until(victim_busy, 60, "the victim to be running jobs")
            fleet.kill(victim)

            async def all_done() -> bool:
                return bool(await aw.backend.due_or_running() == 0)  # type: ignore[attr-defined]

            await until(all_done, 90, "every job to finish")
            for job_id in ids:
                job = await aw.get_job(job_id)
                assert job is not None and job.status is JobStatus.SUCCEEDED, job
            completions = await succeeded_events(postgres_url, url)
            assert all(completions.get(job_id) == 1 for job_id in ids), completions
    finally:
        fleet.stop_all()


async def succeeded_events(postgres_url: str, url: str) -> dict[str, int]:
    """Accepted completions per job, read from the events table of ``url``'s schema."""
    schema = url.split("schema=", 1)[1].split("&", 1)[0]
    conn = await asyncpg.connect(postgres_url)
    try:
        rows = await conn.fetch(
            f"SELECT job_id, count(*) FROM {schema}.events WHERE kind = 'succeeded' GROUP BY job_id"
        )
    finally:
        await conn.close()
    return {row[0]: row[1] for row in rows}

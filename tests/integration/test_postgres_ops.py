"""PostgreSQL in operation: behind PgBouncer, at ``max_connections``, on psycopg, trimming.

Real servers only: a private postgres (and a private pgbouncer in front of it, from
Debian's ``pgbouncer`` package, installed by ``scripts/install-system-deps``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import anyio
import asyncpg
import pytest

from afterwork import Afterwork, JobStatus
from afterwork.backends import from_url
from afterwork.backends.postgres import PostgresBackend
from afterwork.exceptions import BackendUnavailable

from ..pg_server import PgBouncer, PostgresServer
from ..waiting import eventually
from .test_postgres import new, schema_url

pytestmark = pytest.mark.anyio


# -- behind PgBouncer in transaction mode -------------------------------------------------------


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    server = PostgresServer()
    server.start()
    bouncer = None
    try:
        bouncer = PgBouncer(server, pool_mode="transaction", pool_size=4)
        bouncer.start()
        yield bouncer
    finally:
        if bouncer is not None:
            bouncer.stop()
        server.remove()


async def listening_backends(bouncer: PgBouncer) -> int:
    """Server sessions whose last statement was a ``LISTEN`` (read past the pooler)."""
    direct = await asyncpg.connect(bouncer.server.url)
    try:
        return int(
            await direct.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%'"
            )
        )
    finally:
        await direct.close()


async def test_behind_pgbouncer_in_transaction_mode_jobs_run_and_wake_ups_poll(
    bouncer: PgBouncer,
) -> None:
    # A plain URL: the store sees the pooler (its backend pid is not the server's) and
    # turns off prepared statement caching and LISTEN by itself.
    url = schema_url(bouncer.url, max_poll_interval="0.5")
    aw = Afterwork(url, heartbeat_interval=0.2, reaper_interval=0.2)
    runs: Counter[int] = Counter()
    began: dict[int, float] = {}

    @aw.task
    async def work(n: int) -> int:
        runs[n] += 1
        began.setdefault(n, time.monotonic())
        return n

    client = from_url(url)  # another "process": its commits reach the worker only by polling
    assert isinstance(client, PostgresBackend)
    async with aw:
        store = aw.backend
        assert isinstance(store, PostgresBackend)
        assert store.behind_pooler
        await client.open()
        try:
            assert client.behind_pooler
            jobs = await aw.enqueue_many([aw.build_job(work, (n,), {}, {}) for n in range(200)])
            jobs += [await work.enqueue(n) for n in range(200, 250)]
            async with aw.worker(concurrency=8):

                async def drained() -> bool:
                    return bool(await store.due_or_running() == 0)

                await eventually(drained, timeout=60, interval=0.05)
                assert sorted(runs) == list(range(250))
                assert max(runs.values()) == 1  # no fault: each job ran once

                # Idle, with no LISTEN anywhere: a job enqueued elsewhere starts within the
                # bounded poll interval (max_poll_interval=0.5 s), not never.
                for n in range(1000, 1003):
                    before = time.monotonic()
                    await client.enqueue([aw.build_job(work, (n,), {}, {})])

                    async def started(n: int = n) -> bool:
                        return n in began

                    await eventually(started, timeout=10)
                    assert began[n] - before < 0.5 + 1.0, began[n] - before
                    await eventually(drained, timeout=10)
            assert await listening_backends(bouncer) == 0
            for job in jobs:
                done = await aw.get_job(job.id)
                assert done is not None and done.status is JobStatus.SUCCEEDED, done
        finally:
            await client.aclose()


async def test_behind_pgbouncer_an_app_transaction_enqueues_too(bouncer: PgBouncer) -> None:
    url = schema_url(bouncer.url)
    store = from_url(url)
    assert isinstance(store, PostgresBackend)
    await store.open()
    conn = await asyncpg.connect(bouncer.url, statement_cache_size=0)
    try:
        async with conn.transaction():
            (job,) = await store.enqueue_in(conn, [new()])
            assert await store.get(job.id) is None
        assert await store.get(job.id) is not None
        transaction = conn.transaction()
        await transaction.start()
        (gone,) = await store.enqueue_in(conn, [new()])
        await transaction.rollback()
        assert await store.get(gone.id) is None
        (claim,) = await store.claim("w", queues=None, limit=5, lease_ttl=10)
        assert claim.job.id == job.id
    finally:
        await conn.close()
        await store.aclose()


async def test_listen_can_be_forced_on_behind_a_session_pooler(bouncer: PgBouncer) -> None:
    # Session pooling keeps one server session per client: LISTEN works there, when asked.
    # Each client connection holds a server session for its life, so the pool must hold
    # both stores' (pool_size 10 and a listener each): a smaller one queues a connection
    # in pgbouncer until query_wait_timeout (120 s), which is not what this test is about.
    session = PgBouncer(bouncer.server, pool_mode="session", pool_size=24)
    session.start()
    try:
        url = schema_url(session.url, listen="true", poll_interval="30", max_poll_interval="30")
        waiter, writer = from_url(url), from_url(url)
        assert isinstance(waiter, PostgresBackend) and isinstance(writer, PostgresBackend)
        await waiter.open()
        await writer.open()
        try:
            assert waiter.behind_pooler
            await eventually(lambda: _listening(session))
            woke = anyio.Event()
            async with anyio.create_task_group() as group:

                async def wait() -> None:
                    await waiter.wait_for_work(None, 30)  # polls every 30 s: NOTIFY wakes it
                    woke.set()

                group.start_soon(wait)
                await writer.enqueue([new()])
                with anyio.fail_after(10):
                    await woke.wait()
        finally:
            await waiter.aclose()
            await writer.aclose()
    finally:
        session.stop()


async def _listening(bouncer: PgBouncer) -> bool:
    return await listening_backends(bouncer) > 0


# -- max_connections exhausted ----------------------------------------------------------------


@pytest.fixture
async def small_server() -> AsyncIterator[PostgresServer]:
    server = PostgresServer(max_connections=4)
    server.start()
    try:
        yield server
    finally:
        server.remove()


async def test_max_connections_exhausted_is_the_documented_error_within_bounded_time(
    small_server: PostgresServer,
) -> None:
    message = "max_connections is exhausted: lower pool_size or raise max_connections"
    url = f"{small_server.url}?connect_timeout=2&pool_size=3&min_pool_size=1"
    store = from_url(url)
    assert isinstance(store, PostgresBackend)
    await store.open()  # the pool's first connection, and the listener's
    hogs: list[asyncpg.Connection] = []
    try:

        async def listening() -> bool:
            return store._listener is not None and await small_server_count(small_server) >= 2

        await eventually(listening)
        while True:  # take every slot left
            try:
                hogs.append(await asyncpg.connect(small_server.url))
            except asyncpg.TooManyConnectionsError:
                break
        assert 1 <= len(hogs) <= 2
        # The pooled connection is busy: the next call needs a new one, which is refused.
        async with anyio.create_task_group() as group:
            group.start_soon(store._read, _sleep)  # holds the only pooled connection
            await eventually(lambda: _sleeping(hogs[0]))
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match=message) as raised:
                await store.get("nothing")
            assert time.monotonic() - started < 5.0
            assert raised.value.may_have_applied is False
        # A new store cannot even open: the same error, as quickly.
        other = from_url(url)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=message):
            await other.open()
        assert time.monotonic() - started < 5.0
        # Slots come back: the store works again without being reopened.
        for hog in hogs:
            await hog.close()
        (job,) = await store.enqueue([new()])
        assert await store.get(job.id) is not None
    finally:
        for hog in hogs:
            await hog.close()
        await store.aclose()


async def _sleep(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_sleep(1.5)")


async def _sleeping(conn: asyncpg.Connection) -> bool:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
    return bool(await conn.fetchval(sql))


async def small_server_count(server: PostgresServer) -> int:
    """Client connections the server holds now (one more, briefly: this one)."""
    conn = await asyncpg.connect(server.url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) - 1 FROM pg_stat_activity WHERE backend_type = 'client backend'"
            )
        )
    finally:
        await conn.close()


# -- retention in small batches ---------------------------------------------------------------


async def test_events_are_trimmed_in_small_batches_however_far_behind(postgres_url: str) -> None:
    url = schema_url(postgres_url)
    schema = url.rsplit("schema=", 1)[1]
    keeper = from_url(f"{url}&event_retention=100000")
    assert isinstance(keeper, PostgresBackend)
    await keeper.open()
    await keeper.enqueue([new() for _ in range(1000)])  # 1,000 events kept
    await keeper.aclose()
    # A process that keeps only 10 events: every event it writes trims at most 2 of the
    # oldest (one short statement), never the 990 at once.
    trimmer = from_url(f"{url}&event_retention=10")
    assert isinstance(trimmer, PostgresBackend)
    await trimmer.open()
    conn = await asyncpg.connect(postgres_url)
    try:

        async def events() -> int:
            return int(await conn.fetchval(f"SELECT count(*) FROM {schema}.events"))

        assert await events() == 1000
        await trimmer.enqueue([new()])
        assert await events() == 1000 + 1 - 2
        for _ in range(5):
            await trimmer.enqueue([new()])
        assert await events() == 1000 + 6 - 12
        # A write of many events trims up to twice as many: the deletes outpace the inserts.
        await trimmer.enqueue([new() for _ in range(1500)])
        assert await events() == 10
    finally:
        await conn.close()
        await trimmer.aclose()


# -- transactional enqueue on SQLAlchemy's psycopg (v3) driver ------------------------------------


async def test_enqueue_in_a_sqlalchemy_session_on_psycopg(postgres_url: str) -> None:
    pytest.importorskip("psycopg")
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    url = schema_url(postgres_url)
    schema = url.rsplit("schema=", 1)[1]
    aw = Afterwork(url)

    @aw.task
    async def welcome(user: str) -> str:
        return user

    waiter = from_url(f"{url}&poll_interval=30&max_poll_interval=30")
    engine = create_async_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    async with aw:
        await waiter.open()
        try:
            async with engine.begin() as setup:
                await setup.execute(text(f"CREATE TABLE {schema}.users (name text PRIMARY KEY)"))

            async def users() -> list[str]:
                async with engine.connect() as look:
                    rows = await look.execute(text(f"SELECT name FROM {schema}.users"))
                    return sorted(row[0] for row in rows)

            # Commit: the app's row and the job, together; the commit wakes a waiting worker.
            woke = anyio.Event()
            async with anyio.create_task_group() as group:

                async def wait() -> None:
                    await waiter.wait_for_work(None, 30)  # polls every 30 s: NOTIFY wakes it
                    woke.set()

                await eventually(lambda: _idle(waiter))
                group.start_soon(wait)
                async with AsyncSession(engine) as session:
                    await session.execute(text(f"INSERT INTO {schema}.users VALUES ('ada')"))
                    job = await welcome.options(connection=session).enqueue("ada")
                    assert await aw.get_job(job.id) is None  # invisible until the commit
                    assert not woke.is_set()
                    await session.commit()
                with anyio.fail_after(10):
                    await woke.wait()
            assert await users() == ["ada"]
            stored = await aw.get_job(job.id)
            assert stored is not None and stored.status is JobStatus.QUEUED

            # Rollback: neither the row nor the job.
            async with AsyncSession(engine) as session:
                await session.execute(text(f"INSERT INTO {schema}.users VALUES ('bob')"))
                gone = await welcome.options(connection=session).enqueue("bob")
                await session.rollback()
            assert await users() == ["ada"]
            assert await aw.get_job(gone.id) is None

            # An AsyncConnection, and enqueue_many.
            async with engine.connect() as connection:
                many = await aw.enqueue_many(
                    [aw.build_job(welcome, (name,), {}, {}) for name in ("cy", "di")],
                    connection=connection,
                )
                await connection.commit()
            for job_ in many:
                assert await aw.get_job(job_.id) is not None

            # The worker runs what was committed.
            async with aw.worker(concurrency=2):
                await eventually(lambda: _idle(waiter))
            for job_id in (job.id, *(j.id for j in many)):
                finished = await aw.get_job(job_id)
                assert finished is not None and finished.status is JobStatus.SUCCEEDED
        finally:
            await waiter.aclose()
            await engine.dispose()


async def _idle(store: object) -> bool:
    assert isinstance(store, PostgresBackend)
    return bool(await store.due_or_running() == 0)


async def test_enqueue_in_a_psycopg_connection(postgres_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    from afterwork.exceptions import EnqueueError

    url = schema_url(postgres_url)
    store = from_url(url)
    assert isinstance(store, PostgresBackend)
    await store.open()
    try:
        # psycopg's default: the first statement opens a transaction the app commits.
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            (job,) = await store.enqueue_in(conn, [new()])
            assert await store.get(job.id) is None
            await conn.commit()
            assert await store.get(job.id) is not None
            (gone,) = await store.enqueue_in(conn, [new()])
            await conn.rollback()
            assert await store.get(gone.id) is None
        # Autocommit: outside a transaction block the enqueue is its own; inside one, the app's.
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            (alone,) = await store.enqueue_in(conn, [new()])
            assert await store.get(alone.id) is not None
            async with conn.transaction():
                (inner,) = await store.enqueue_in(conn, [new()])
                assert await store.get(inner.id) is None
            assert await store.get(inner.id) is not None
        with pytest.raises(EnqueueError, match="closed"):
            await store.enqueue_in(conn, [new()])
    finally:
        await store.aclose()

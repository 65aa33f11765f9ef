"""Transactional enqueue on the SQLite store (issue 12; RELIABILITY.md T-TXENQ).

Real SQLite files, real SQLAlchemy on aiosqlite: the app's table and afterwork's jobs in
one file, written in one transaction. A job exists if and only if that transaction
commits; its ``enqueued`` event likewise; this process's workers are woken after the
commit, never on rollback; a worker in another process runs a committed job.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from afterwork import Afterwork, EnqueueError, Job, JobCall, JobStatus
from afterwork.backends.sqlite import SQLiteBackend
from afterwork.exceptions import BackendUnavailable

from ..waiting import eventually

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def make_app(path: Path) -> tuple[Afterwork, Any]:
    aw = Afterwork(f"sqlite:///{path}")

    @aw.task(name="work")
    async def work(n: int, seconds: float = 0.0) -> int:
        return n

    return aw, work


def engine_for(path: Path) -> AsyncEngine:
    return create_async_engine(f"sqlite+aiosqlite:///{path}")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
async def app(db: Path) -> AsyncIterator[tuple[Afterwork, Any, AsyncEngine]]:
    aw, work = make_app(db)
    await aw.backend.open()
    engine = engine_for(db)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
    try:
        yield aw, work, engine
    finally:
        await engine.dispose()
        await aw.backend.aclose()


def rows(path: Path, sql: str, *params: Any) -> list[Any]:
    """What another connection (another process) sees of the file, committed only."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def job_count(path: Path) -> int:
    return int(rows(path, "SELECT count(*) FROM afterwork_jobs")[0][0])


def events_of(path: Path, job_id: str) -> list[str]:
    return [r[0] for r in rows(path, "SELECT kind FROM afterwork_events WHERE job_id = ?", job_id)]


def ticket(aw: Afterwork) -> int:
    backend = aw.backend
    assert isinstance(backend, SQLiteBackend)
    return backend._work.ticket()


# -- commit and rollback -------------------------------------------------------------------


async def test_a_committed_job_runs_with_its_event(app: Any, db: Path) -> None:
    aw, work, engine = app
    before = ticket(aw)
    async with AsyncSession(engine) as session:
        await session.execute(text("INSERT INTO notes (body) VALUES ('hello')"))
        job = await work.options(connection=session).enqueue(7)
        assert job.created_now and job.status is JobStatus.QUEUED
        # Not visible to any other connection yet, and no worker was woken.
        assert job_count(db) == 0 and events_of(db, job.id) == []
        assert await aw.get_job(job.id) is None
        assert ticket(aw) == before
        await session.commit()
    assert ticket(aw) > before  # woken after the commit
    assert events_of(db, job.id) == ["enqueued"]
    assert rows(db, "SELECT body FROM notes") == [("hello",)]
    await aw.drain()
    done = await aw.get_job(job.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == 7


async def test_a_rolled_back_job_never_existed(app: Any, db: Path) -> None:
    aw, work, engine = app
    before = ticket(aw)
    async with AsyncSession(engine) as session:
        await session.execute(text("INSERT INTO notes (body) VALUES ('lost')"))
        job = await work.options(connection=session).enqueue(1)
        await session.rollback()
    assert ticket(aw) == before  # no wake-up
    assert job_count(db) == 0
    assert events_of(db, job.id) == []
    assert rows(db, "SELECT count(*) FROM notes") == [(0,)]
    assert await aw.get_job(job.id) is None
    # A later commit of the same session wakes for its own jobs only, not the rolled back.
    async with AsyncSession(engine) as session:
        await session.execute(text("INSERT INTO notes (body) VALUES ('other')"))
        await session.commit()
    assert ticket(aw) == before


async def test_a_session_closed_without_commit_rolls_the_jobs_back(app: Any, db: Path) -> None:
    aw, work, engine = app
    before = ticket(aw)
    async with AsyncSession(engine) as session:
        job = await work.options(connection=session).enqueue(1)
    assert job_count(db) == 0 and events_of(db, job.id) == []
    assert ticket(aw) == before


def seen_when_woken(aw: Afterwork, db: Path) -> asyncio.Task[int]:
    """How many jobs another connection sees at the moment this process's workers wake."""
    backend = aw.backend
    assert isinstance(backend, SQLiteBackend)
    since = backend._work.ticket()

    async def wait() -> int:
        assert await backend._work.wait(since, 10), "no wake-up"
        return job_count(db)  # at once, before the loop runs anything else

    return asyncio.ensure_future(wait())


async def test_workers_wake_only_once_the_commit_is_done(app: Any, db: Path) -> None:
    aw, work, engine = app
    async with AsyncSession(engine) as session:
        woken = seen_when_woken(aw, db)
        await work.options(connection=session).enqueue(1)
        await session.commit()
    assert await woken == 1
    async with engine.connect() as conn:
        woken = seen_when_woken(aw, db)
        await work.options(connection=conn).enqueue(2)
        await conn.commit()
    assert await woken == 2


async def test_a_session_closed_then_reused_does_not_wake_for_dropped_jobs(
    app: Any, db: Path
) -> None:
    aw, work, engine = app
    before = ticket(aw)
    session = AsyncSession(engine)
    dropped = await work.options(connection=session).enqueue(1)
    await session.close()  # a rollback that fires no after_rollback
    await session.execute(text("INSERT INTO notes (body) VALUES ('later')"))
    await session.commit()
    await session.close()
    assert ticket(aw) == before
    assert job_count(db) == 0 and events_of(db, dropped.id) == []


async def test_through_a_connection_commit_and_rollback(app: Any, db: Path) -> None:
    aw, work, engine = app
    before = ticket(aw)
    async with engine.connect() as conn:
        kept = await work.options(connection=conn).enqueue(1)
        await conn.commit()
    # The wake-up is queued behind the driver's COMMIT: it comes once the commit is done.
    await eventually(lambda: _async(ticket(aw) > before), timeout=5)
    assert events_of(db, kept.id) == ["enqueued"]
    woken = ticket(aw)
    async with engine.connect() as conn:
        dropped = await work.options(connection=conn).enqueue(2)
        await conn.rollback()
    assert ticket(aw) == woken
    assert [r[0] for r in rows(db, "SELECT id FROM afterwork_jobs")] == [kept.id]
    assert events_of(db, dropped.id) == []
    await aw.drain()
    done = await aw.get_job(kept.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED


async def _async(value: bool) -> bool:
    return value


async def test_a_claim_while_the_transaction_is_open_gets_nothing(app: Any, db: Path) -> None:
    """SQLite has one writer: a worker's claim waits for the app's transaction to end, and
    one that gives up first (a short lock timeout here) claims nothing and says so."""
    aw, work, engine = app
    impatient = SQLiteBackend(str(db), busy_timeout=0.05, lock_timeout=0.1)
    await impatient.open()
    try:
        async with AsyncSession(engine) as session:
            job = await work.options(connection=session).enqueue(3)
            with pytest.raises(BackendUnavailable) as caught:
                await impatient.claim("w", queues=None, limit=10, lease_ttl=30.0)
            assert caught.value.may_have_applied is False
            assert await impatient.get(job.id) is None
            await session.commit()
        claims = await impatient.claim("w", queues=None, limit=10, lease_ttl=30.0)
        assert [c.job.id for c in claims] == [job.id]
    finally:
        await impatient.aclose()


# -- keys ----------------------------------------------------------------------------------


async def test_keys_dedupe_inside_and_across_transactions(app: Any, db: Path) -> None:
    aw, work, engine = app
    async with AsyncSession(engine) as session:
        first = await work.options(connection=session, key="k").enqueue(1)
        again = await work.options(connection=session, key="k").enqueue(2)
        assert first.created_now and not again.created_now and again.id == first.id
        await session.commit()
    async with AsyncSession(engine) as session:
        later = await work.options(connection=session, key="k").enqueue(3)
        assert not later.created_now and later.id == first.id
        await session.commit()
    plain = await work.options(key="k").enqueue(4)
    assert plain.id == first.id
    assert job_count(db) == 1


async def test_a_key_freed_by_a_rollback_goes_to_the_next_transaction(app: Any, db: Path) -> None:
    """T-TXENQ (c): two concurrent unique enqueues, the first rolls back: exactly one job."""
    aw, work, engine = app
    async with AsyncSession(engine) as first, AsyncSession(engine) as second:
        dropped = await work.options(connection=first, key="k").enqueue(1)
        # The second waits for SQLite's write lock, held by the first transaction.
        waiting = asyncio.ensure_future(work.options(connection=second, key="k").enqueue(2))
        await first.rollback()
        kept = await waiting
        await second.commit()
    assert kept.created_now and kept.id != dropped.id
    assert [r[0] for r in rows(db, "SELECT id FROM afterwork_jobs")] == [kept.id]


async def test_enqueue_many_in_a_transaction(app: Any, db: Path) -> None:
    aw, work, engine = app
    async with AsyncSession(engine) as session:
        jobs = await aw.enqueue_many(
            [aw.build_job(work, (n,), {}, {"key": f"k{n % 2}"} if n < 4 else {}) for n in range(6)],
            connection=session,
        )
        assert [j.created_now for j in jobs] == [True, True, False, False, True, True]
        assert job_count(db) == 0
        await session.commit()
    assert job_count(db) == 4


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.lists(st.sampled_from(["a", "b", None]), max_size=4), st.booleans()),
        min_size=1,
        max_size=5,
    )
)
def test_transactions_agree_with_a_model(
    tmp_path_factory: pytest.TempPathFactory, txs: list[tuple[list[str | None], bool]]
) -> None:
    """Any sequence of transactions, each enqueuing keyed or unkeyed jobs and committing or
    rolling back: the store holds exactly the jobs of the committed ones, one per key."""
    path = tmp_path_factory.mktemp("model") / "app.db"

    async def run() -> None:
        aw, work = make_app(path)
        await aw.backend.open()
        engine = engine_for(path)
        expected: set[str] = set()
        keys: dict[str, str] = {}
        try:
            for keyed, commit in txs:
                seen: dict[str, str] = {}
                created: set[str] = set()
                async with AsyncSession(engine) as session:
                    for n, key in enumerate(keyed):
                        options: dict[str, Any] = {} if key is None else {"key": key}
                        job = await work.options(connection=session, **options).enqueue(n)
                        holder = keys.get(key, seen.get(key)) if key is not None else None
                        assert job.created_now is (holder is None)
                        if holder is not None:
                            assert job.id == holder
                        else:
                            created.add(job.id)
                            if key is not None:
                                seen[key] = job.id
                    if commit:
                        await session.commit()
                        expected |= created
                        keys.update(seen)
                    else:
                        await session.rollback()
            stored = {r[0] for r in rows(path, "SELECT id FROM afterwork_jobs")}
            assert stored == expected
            events = {r[0] for r in rows(path, "SELECT job_id FROM afterwork_events")}
            assert events == expected
        finally:
            await engine.dispose()
            await aw.backend.aclose()

    asyncio.run(run())


# -- refusals: nothing is written -----------------------------------------------------------


async def test_another_file_is_refused(app: Any, db: Path, tmp_path: Path) -> None:
    aw, work, engine = app
    other = engine_for(tmp_path / "other.db")
    try:
        async with AsyncSession(other) as session:
            with pytest.raises(EnqueueError, match="not to the store's file"):
                await work.options(connection=session).enqueue(1)
    finally:
        await other.dispose()
    assert job_count(db) == 0
    assert rows(tmp_path / "other.db", "SELECT name FROM sqlite_master") == []


async def test_an_in_memory_database_is_refused(app: Any, db: Path) -> None:
    aw, work, engine = app
    memory = create_async_engine("sqlite+aiosqlite://")
    try:
        async with memory.connect() as conn:
            with pytest.raises(EnqueueError, match="in-memory"):
                await work.options(connection=conn).enqueue(1)
    finally:
        await memory.dispose()
    assert job_count(db) == 0


async def test_the_same_file_by_another_path_is_accepted(app: Any, db: Path) -> None:
    aw, work, engine = app
    link = db.parent / "link.db"
    link.symlink_to(db)
    linked = engine_for(link)
    try:
        async with AsyncSession(linked) as session:
            await work.options(connection=session).enqueue(1)
            await session.commit()
    finally:
        await linked.dispose()
    assert job_count(db) == 1


async def test_closed_sessions_and_connections_are_refused(app: Any, db: Path) -> None:
    aw, work, engine = app
    conn = await engine.connect()
    await conn.close()
    with pytest.raises(EnqueueError, match="closed"):
        await work.options(connection=conn).enqueue(1)
    session = AsyncSession(engine, close_resets_only=False)
    await session.close()
    with pytest.raises(EnqueueError, match="permanently closed"):
        await work.options(connection=session).enqueue(1)
    with pytest.raises(EnqueueError, match="not been started"):
        await work.options(connection=engine.connect()).enqueue(1)
    assert job_count(db) == 0


async def test_an_autocommit_connection_is_refused(app: Any, db: Path) -> None:
    aw, work, engine = app
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as conn:
        with pytest.raises(EnqueueError, match="autocommit"):
            await work.options(connection=conn).enqueue(1)
    assert job_count(db) == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda db, engine: sqlite3.connect(db),
        lambda db, engine: engine,
        lambda db, engine: f"sqlite:///{db}",
        lambda db, engine: object(),
    ],
    ids=["sqlite3", "engine", "url", "object"],
)
async def test_other_kinds_are_refused(
    app: Any, db: Path, make: Callable[[Path, AsyncEngine], Any]
) -> None:
    aw, work, engine = app
    with pytest.raises(EnqueueError, match="AsyncSession or AsyncConnection"):
        await work.options(connection=make(db, engine)).enqueue(1)
    assert job_count(db) == 0


async def test_a_store_without_transactions_is_named(tmp_path: Path) -> None:
    aw = Afterwork("memory://")

    @aw.task
    async def noop() -> None: ...

    engine = engine_for(tmp_path / "x.db")
    try:
        async with aw, AsyncSession(engine) as session:
            with pytest.raises(EnqueueError, match="MemoryBackend store") as caught:
                await noop.options(connection=session).enqueue()
            assert caught.value.field == "connection"
            assert await aw.list_jobs() == []
    finally:
        await engine.dispose()


async def test_validation_and_middleware_apply_as_for_a_plain_enqueue(app: Any, db: Path) -> None:
    aw, work, engine = app
    seen: list[tuple[str, str]] = []

    async def record(call: JobCall, call_next: Callable[[], Awaitable[Job | None]]) -> Job | None:
        job = await call_next()
        assert job is not None
        seen.append((call.kind, job.id))
        return job

    aw.middleware(record)

    async with AsyncSession(engine) as session:
        with pytest.raises(EnqueueError) as caught:
            await work.options(connection=session).enqueue("not a number")
        assert caught.value.param == "n"
        with pytest.raises(EnqueueError, match="delay"):
            await work.options(connection=session, delay=-1).enqueue(1)
        job = await work.options(connection=session).enqueue(1)
        await session.commit()
    assert seen == [("enqueue", job.id)]
    assert job_count(db) == 1
    with pytest.raises(EnqueueError, match="connection is not an option of the job"):
        aw.build_job(work, (1,), {}, {"connection": None})
    with pytest.raises(TypeError, match="await"):
        work.options(connection=object()).enqueue_sync(1)


# -- another process ----------------------------------------------------------------------


def start_worker(db: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AFTERWORK_URL": f"sqlite:///{db}",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "afterwork", "worker", "tests.integration.sqlite_worker_app:aw"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_a_worker_in_another_process_runs_a_committed_job(app: Any, db: Path) -> None:
    aw, work, engine = app
    async with AsyncSession(engine) as session:
        dropped = await work.options(connection=session).enqueue(1)
        await session.rollback()
    async with AsyncSession(engine) as session:
        job = await work.options(connection=session).enqueue(42, 0.0)
        await session.commit()
    proc = start_worker(db)
    try:

        async def finished() -> Any:
            current = await aw.get_job(job.id)
            return current if current is not None and current.is_finished else None

        done = await eventually(finished, timeout=60, interval=0.05)
        assert done.status is JobStatus.SUCCEEDED and done.result == 42
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert await aw.get_job(dropped.id) is None


async def test_eager_mode_stores_a_transactional_job_instead_of_running_it(
    app: Any, db: Path
) -> None:
    """Running it inline would run it before the commit that decides whether it exists."""
    aw, work, engine = app
    aw.eager = True
    async with AsyncSession(engine) as session:
        job = await work.options(connection=session).enqueue(5)
        assert job.status is JobStatus.QUEUED
        await session.rollback()
    assert job_count(db) == 0
    assert (await work.enqueue(6)).status is JobStatus.SUCCEEDED  # a plain one runs inline

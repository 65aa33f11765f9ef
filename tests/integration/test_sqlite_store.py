"""What the SQLite backend guarantees beyond the conformance suite: schema versions,
malformed records, CHECK constraints, lock handling, and events and wake-ups shared by
separate connections to one file (as separate processes would have)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from afterwork import Afterwork, JobStatus
from afterwork.backends import from_url
from afterwork.backends._sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from afterwork.backends.base import NewJob
from afterwork.backends.sqlite import SQLiteBackend, path_from_url
from afterwork.exceptions import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    SchemaVersionError,
)
from afterwork.job import new_job_id
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "afterwork.db")


@pytest.fixture
async def backend(db_path: str) -> AsyncIterator[SQLiteBackend]:
    store = SQLiteBackend(db_path)
    await store.open()
    yield store
    await store.aclose()


@pytest.fixture
def raw(db_path: str, backend: SQLiteBackend) -> Iterator[sqlite3.Connection]:
    """A plain connection to the same file, for writing what afterwork never would."""
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=5)
    yield conn
    conn.close()


def insert_raw(conn: sqlite3.Connection, **fields: Any) -> str:
    row: dict[str, Any] = {
        "id": new_job_id(),
        "task": "work",
        "queue": "default",
        "status": "queued",
        "args": "[]",
        "kwargs": "{}",
        "created_at": time.time(),
        "run_at": time.time(),
    }
    row.update(fields)
    names = ", ".join(row)
    marks = ", ".join("?" * len(row))
    conn.execute(f"INSERT INTO afterwork_jobs ({names}) VALUES ({marks})", tuple(row.values()))
    return str(row["id"])


# -- URLs and opening ------------------------------------------------------------------------


def test_url_paths_and_options(tmp_path: Path) -> None:
    assert path_from_url("sqlite:///./afterwork.db") == "./afterwork.db"
    assert path_from_url("sqlite:////var/lib/aw.db") == "/var/lib/aw.db"
    backend = SQLiteBackend.from_url(
        f"sqlite:///{tmp_path}/x.db?synchronous=full&busy_timeout=2&event_retention=50"
    )
    assert backend.path == str(tmp_path / "x.db")
    assert isinstance(from_url(f"sqlite:///{tmp_path}/y.db"), SQLiteBackend)
    for bad in (
        "sqlite:///:memory:",
        "sqlite://",
        f"sqlite:///{tmp_path}/x.db?colour=blue",
        f"sqlite:///{tmp_path}/x.db?busy_timeout=soon",
        f"sqlite:///{tmp_path}/x.db?synchronous=sometimes",
    ):
        with pytest.raises(ConfigurationError):
            SQLiteBackend.from_url(bad)


async def test_afterwork_without_url_uses_sqlite_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AFTERWORK_URL", raising=False)
    aw = Afterwork()
    assert isinstance(aw.backend, SQLiteBackend)
    async with aw:

        @aw.task
        async def hello() -> str:
            return "hi"

        job = await hello.enqueue()
        assert await aw.drain() == 1
        done = await aw.get_job(job.id)
        assert done is not None and done.result == "hi"
    assert (tmp_path / "afterwork.db").exists()


async def test_open_is_idempotent_and_close_is_safe_twice(db_path: str) -> None:
    store = SQLiteBackend(db_path)
    await store.open()
    await store.open()
    await store.aclose()
    await store.aclose()
    with pytest.raises(BackendUnavailable):
        await store.get("x")


async def test_not_a_database_is_a_backend_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database, just text" * 100)
    store = SQLiteBackend(str(path))
    with pytest.raises(BackendError) as info:
        await store.open()
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    await store.aclose()


async def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    store = SQLiteBackend(str(tmp_path / "no" / "such" / "dir" / "x.db"))
    with pytest.raises(BackendUnavailable):
        await store.open()


# -- schema versions -------------------------------------------------------------------------


def schema_version(path: str) -> int:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT value FROM afterwork_meta WHERE name = 'schema_version'")
        return int(row.fetchone()[0])


async def test_new_store_is_stamped_with_the_current_version(
    backend: SQLiteBackend, db_path: str
) -> None:
    assert schema_version(db_path) == SCHEMA_VERSION
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_store_from_a_newer_version_is_refused(db_path: str) -> None:
    store = SQLiteBackend(db_path)
    await store.open()
    await store.enqueue([NewJob(id=new_job_id(), task="t")])
    await store.aclose()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE afterwork_meta SET value = '999' WHERE name = 'schema_version'")
    newer = SQLiteBackend(db_path)
    with pytest.raises(SchemaVersionError, match="schema version 999.*newer afterwork"):
        await newer.open()
    await newer.aclose()
    # Refusing changed nothing.
    assert schema_version(db_path) == 999
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM afterwork_jobs").fetchone()[0] == 1


async def test_forward_migrations_run_once_on_open(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteBackend(db_path)
    await store.open()
    (job,) = await store.enqueue([NewJob(id=new_job_id(), task="t", args=[1])])
    await store.aclose()
    step = (
        "ALTER TABLE afterwork_jobs ADD COLUMN note TEXT",
        "UPDATE afterwork_jobs SET note = 'x'",
    )
    monkeypatch.setattr("afterwork.backends.sqlite.MIGRATIONS", [*MIGRATIONS, step])
    monkeypatch.setattr("afterwork.backends.sqlite.SCHEMA_VERSION", SCHEMA_VERSION + 1)
    for _ in range(2):  # the second open finds the store current and changes nothing
        upgraded = SQLiteBackend(db_path)
        await upgraded.open()
        again = await upgraded.get(job.id)
        assert again is not None and again.args == [1]
        await upgraded.aclose()
    assert schema_version(db_path) == SCHEMA_VERSION + 1
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT note FROM afterwork_jobs").fetchall() == [("x",)]


async def test_a_failed_migration_leaves_the_old_version(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteBackend(db_path)
    await store.open()
    await store.aclose()
    broken = ("ALTER TABLE afterwork_jobs ADD COLUMN note TEXT", "THIS IS NOT SQL")
    monkeypatch.setattr("afterwork.backends.sqlite.MIGRATIONS", [*MIGRATIONS, broken])
    monkeypatch.setattr("afterwork.backends.sqlite.SCHEMA_VERSION", SCHEMA_VERSION + 1)
    upgraded = SQLiteBackend(db_path)
    with pytest.raises(BackendError):
        await upgraded.open()
    await upgraded.aclose()
    assert schema_version(db_path) == SCHEMA_VERSION
    with sqlite3.connect(db_path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(afterwork_jobs)")]
    assert "note" not in columns


# -- bad data --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "bogus"},
        {"attempts": -1},
        {"max_attempts": -2},
        {"status": "running"},  # running without a lease
        {"status": "succeeded"},  # finished without finished_at
        {"status": "queued", "finished_at": 1.0},
        {"task": ""},
        {"cancel_requested": 7},
        {"progress": 1.5},
        {"attempts": "many"},  # STRICT: the wrong type
        {"args": None},
    ],
)
async def test_check_constraints_reject_impossible_states(
    raw: sqlite3.Connection, fields: dict[str, Any]
) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        insert_raw(raw, **fields)


async def test_malformed_records_are_quarantined_and_the_worker_carries_on(
    db_path: str, raw: sqlite3.Connection
) -> None:
    aw = Afterwork(f"sqlite:///{db_path}")
    async with aw:

        @aw.task(name="work")
        async def work(x: int = 0) -> int:
            return x

        html = "<script>alert(1)</script>"
        bad_json = insert_raw(raw, args="[1, 2", kwargs="{nope")
        pickled = insert_raw(raw, args="\x80\x04\x95 cos\nsystem\n")
        wrong_shape = insert_raw(raw, args='{"a": 1}')
        bad_error = insert_raw(raw, error="<html>")
        unknown = insert_raw(raw, task=f"{html}:nobody", queue="default", key=html)
        good = await work.enqueue(7)
        assert await aw.drain() == 2  # quarantined records are never handed to the runner
        for job_id in (bad_json, pickled, wrong_shape, bad_error):
            job = await aw.get_job(job_id)
            assert job is not None and job.status is JobStatus.FAILED, job_id
            assert job.error is not None and job.error.type == "afterwork.MalformedRecord"
            assert "malformed" in job.error.message
        lost = await aw.get_job(unknown)
        assert lost is not None and lost.status is JobStatus.FAILED
        assert lost.error is not None and lost.error.type == "afterwork.TaskNotFound"
        assert html in lost.error.message  # stored as text; escaping is the renderer's job
        done = await aw.get_job(good.id)
        assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == 7
        # Listing and counting still work with corrupt rows around.
        listed = await aw.list_jobs(limit=100)
        assert {j.id for j in listed} >= {bad_json, pickled, unknown, good.id}
        stats = {s.queue: s for s in await aw.stats()}
        assert stats["default"].counts[JobStatus.FAILED] == 5
        # A failed malformed job can be retried by hand, and is quarantined again.
        again = await aw.retry(bad_json)
        assert again is not None and again.status is JobStatus.QUEUED
        assert await aw.drain() == 0
        failed = await aw.get_job(bad_json)
        assert failed is not None and failed.status is JobStatus.FAILED


async def test_reading_a_corrupt_finished_job_reports_it(
    backend: SQLiteBackend, raw: sqlite3.Connection
) -> None:
    job_id = insert_raw(
        raw, status="succeeded", finished_at=time.time(), result="{broken", args="[1]"
    )
    job = await backend.get(job_id)
    assert job is not None and job.status is JobStatus.SUCCEEDED
    assert job.args == [1] and job.result is None
    assert job.error is not None and job.error.type == "afterwork.MalformedRecord"
    assert "result is not valid JSON" in job.error.message


# -- locks -----------------------------------------------------------------------------------


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_a_locked_store_is_retried_not_reported(db_path: str) -> None:
    store = SQLiteBackend(db_path, busy_timeout=0.02, lock_timeout=30)
    await store.open()
    try:
        holder = sqlite3.connect(db_path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        enqueue = asyncio.ensure_future(store.enqueue([NewJob(id=new_job_id(), task="t")]))
        await wait_until(lambda: store.busy_retries >= 2)
        assert not enqueue.done()
        holder.execute("COMMIT")
        holder.close()
        (job,) = await asyncio.wait_for(enqueue, 10)
        assert (await store.get(job.id)) == job
    finally:
        await store.aclose()


async def test_a_lock_held_too_long_is_unavailable(db_path: str) -> None:
    store = SQLiteBackend(db_path, busy_timeout=0.01, lock_timeout=0.2)
    await store.open()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BackendUnavailable, match="stayed locked") as info:
            await store.enqueue([NewJob(id=new_job_id(), task="t")])
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await store.aclose()


# -- several connections to one file ---------------------------------------------------------


async def test_events_written_by_another_connection_are_delivered_with_ids(
    db_path: str,
) -> None:
    web = SQLiteBackend(db_path, event_poll_interval=0.02)
    worker = SQLiteBackend(db_path)
    await web.open()
    await worker.open()
    try:
        # Events from before the subscription are not replayed.
        await worker.enqueue([NewJob(id=new_job_id(), task="old")])
        stream = web.events()
        (job,) = await worker.enqueue([NewJob(id=new_job_id(), task="new")])
        (claim,) = await worker.claim("w", queues=None, limit=1, lease_ttl=10)
        assert claim.job.id != job.id  # the older job is claimed first
        await worker.begin([claim.lease])  # a claim starts nothing: beginning does
        events = []
        async with asyncio.timeout(10):
            async for event in stream:
                events.append(event)
                if len(events) == 2:
                    break
        await stream.aclose()
        assert [(e.kind, e.task) for e in events] == [("enqueued", "new"), ("started", "old")]
        assert events[0].id is not None and events[1].id is not None
        assert int(events[1].id) > int(events[0].id)
    finally:
        await web.aclose()
        await worker.aclose()


async def test_event_table_keeps_only_recent_events(db_path: str) -> None:
    store = SQLiteBackend(db_path, event_retention=20)
    await store.open()
    try:
        for _ in range(10):
            await store.enqueue([NewJob(id=new_job_id(), task="t") for _ in range(10)])
    finally:
        await store.aclose()
    with sqlite3.connect(db_path) as conn:
        count = conn.execute("SELECT count(*) FROM afterwork_events").fetchone()[0]
    assert 20 <= count <= 40


async def test_closing_ends_event_streams(backend: SQLiteBackend) -> None:
    stream = backend.events()
    await backend.aclose()
    with pytest.raises(StopAsyncIteration):
        async with asyncio.timeout(5):
            await anext(stream)


async def test_idle_worker_wakes_for_work_from_another_connection(db_path: str) -> None:
    idle = SQLiteBackend(db_path, poll_interval=0.02, max_poll_interval=0.1)
    other = SQLiteBackend(db_path)
    await idle.open()
    await other.open()
    try:
        waiting = asyncio.ensure_future(idle.wait_for_work(["default"], 30))
        await asyncio.sleep(0)  # let it find the queue empty and start waiting
        assert not waiting.done()
        started = time.monotonic()
        await other.enqueue([NewJob(id=new_job_id(), task="t")])
        await asyncio.wait_for(waiting, 10)
        assert time.monotonic() - started < 5  # polled, not the 30 s timeout
        # Work in another queue does not count.
        await idle.claim("w", queues=None, limit=10, lease_ttl=10)
        await other.enqueue([NewJob(id=new_job_id(), task="t", queue="elsewhere")])
        started = time.monotonic()
        await idle.wait_for_work(["default"], 0.3)
        assert time.monotonic() - started >= 0.25
    finally:
        await idle.aclose()
        await other.aclose()


async def test_wait_for_work_returns_when_a_delayed_job_falls_due(db_path: str) -> None:
    clock = FakeClock()
    store = SQLiteBackend(db_path, clock=clock)
    await store.open()
    try:
        await store.enqueue([NewJob(id=new_job_id(), task="t", delay=0.05)])
        started = time.monotonic()
        await store.wait_for_work(None, 0.2)  # the fake clock never reaches it: times out
        assert time.monotonic() - started >= 0.15
        clock.advance(1)
        started = time.monotonic()
        await store.wait_for_work(None, 30)
        assert time.monotonic() - started < 5
    finally:
        await store.aclose()


def test_claims_from_threads_with_separate_connections_never_overlap(db_path: str) -> None:
    async def setup() -> None:
        store = SQLiteBackend(db_path)
        await store.open()
        await store.enqueue([NewJob(id=new_job_id(), task="t") for _ in range(200)])
        await store.aclose()

    asyncio.run(setup())
    claimed: list[list[str]] = [[] for _ in range(4)]

    def claimer(index: int) -> None:
        async def run() -> None:
            store = SQLiteBackend(db_path, busy_timeout=0.01)
            await store.open()
            try:
                while True:
                    claims = await store.claim(f"w{index}", queues=None, limit=3, lease_ttl=30)
                    if not claims:
                        return
                    claimed[index] += [c.job.id for c in claims]
            finally:
                await store.aclose()

        asyncio.run(run())

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ids = [job_id for batch in claimed for job_id in batch]
    assert len(ids) == 200 and len(set(ids)) == 200


async def test_result_and_error_json_round_trip_through_raw_rows(
    backend: SQLiteBackend, raw: sqlite3.Connection
) -> None:
    await backend.enqueue([NewJob(id=new_job_id(), task="t", args=["é", {"k": [1.5, None]}])])
    (claim,) = await backend.claim("w", queues=None, limit=1, lease_ttl=10)
    from afterwork.backends.base import Outcome

    await backend.finish(claim.lease, Outcome.succeeded({"ok": True}))
    args, result, expires = raw.execute(
        "SELECT args, result, expires_at FROM afterwork_jobs WHERE id = ?", (claim.job.id,)
    ).fetchone()
    assert json.loads(args) == ["é", {"k": [1.5, None]}]
    assert json.loads(result) == {"ok": True}
    assert expires is None  # no result_ttl: kept until purged by age


async def test_a_reaper_whose_clock_runs_ahead_takes_back_no_live_lease(db_path: str) -> None:
    """Lease expiry is judged by the passing of the reaper's own time, not by comparing
    two processes' wall clocks: a process 20 s ahead fails nobody's job."""
    honest = FakeClock(1_700_000_000.0)
    ahead = FakeClock(1_700_000_020.0)
    worker = SQLiteBackend(db_path, clock=honest)
    skewed = SQLiteBackend(db_path, clock=ahead)
    await worker.open()
    await skewed.open()

    def tick(seconds: float) -> None:
        honest.advance(seconds)
        ahead.advance(seconds)

    try:
        (job,) = await worker.enqueue([NewJob(id=new_job_id(), task="t")])
        (claim,) = await worker.claim("w", queues=None, limit=1, lease_ttl=10.0)
        await worker.begin([claim.lease])
        # By the skewed clock this lease is overdue from the start; it is renewed on time.
        for _ in range(8):
            assert await skewed.recover_expired(max_recoveries=3) == []
            tick(3)
            assert (await worker.heartbeat([claim.lease], lease_ttl=10.0)).lost == frozenset()
        # The worker dies. The skewed reaper takes the job back one lease after it saw the
        # last renewal, not before.
        assert await skewed.recover_expired(max_recoveries=3) == []
        tick(9.5)
        assert await skewed.recover_expired(max_recoveries=3) == []
        tick(0.5)
        (back,) = await skewed.recover_expired(max_recoveries=3)
        assert back.id == job.id and back.status is JobStatus.QUEUED and back.recoveries == 1
    finally:
        await worker.aclose()
        await skewed.aclose()

"""The jobs of plain callables are written behind (``_engine/writebehind.py``).

Each is a job from the moment it starts (served from memory until its row is written),
and its row, once written, is the one two store transactions used to produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from afterwork import Afterwork, Job, JobCall, JobStatus
from afterwork import _lifecycle as life
from afterwork._engine.inline import InlineRunner
from afterwork._engine.writebehind import START_AFTER, started_job
from afterwork.fastapi import Jobs
from afterwork.job import new_job_id

from ..waiting import eventually

pytestmark = pytest.mark.anyio

WAIT = 10


def note(user: str) -> str:
    return f"noted {user}"


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_a_plain_job_exists_at_once_and_its_row_is_the_same(tmp_path: Path) -> None:
    aw = Afterwork(f"sqlite:///{tmp_path / 'jobs.db'}")
    app = FastAPI(lifespan=aw.lifespan)

    @app.post("/note/{user}")
    async def route(user: str, jobs: Jobs) -> dict[str, str]:
        return {"id": jobs.add_task(note, user).id}

    async with app.router.lifespan_context(app), client(app) as http:
        responses = await asyncio.gather(*(http.post(f"/note/u{n}") for n in range(20)))
        ids = [response.json()["id"] for response in responses]
        # The background tasks ran before ASGITransport returned: every job has ended,
        # whether or not its row is written yet.
        for job_id in ids:
            job = await aw.get_job(job_id)
            assert job is not None and job.status is JobStatus.SUCCEEDED
        await aw.join(timeout=WAIT)
        assert aw.local_runs.inline.behind.unwritten == 0
        for n, job_id in enumerate(ids):
            row = await aw.backend.get(job_id)  # the store's own row
            assert row is not None and row.status is JobStatus.SUCCEEDED
            assert row.args == [repr(f"u{n}")] and row.result == f"noted u{n}"
            assert row.attempts == 1 and row.worker is None and row.finished_at is not None
            assert row.started_at is not None
            assert row.created_at <= row.started_at <= row.finished_at
            assert [a.outcome for a in row.timeline] == ["succeeded"]
        kinds = _event_kinds(tmp_path / "jobs.db")
        for job_id in ids:
            assert [kind for j, kind in kinds if j == job_id] == ["started", "succeeded"]


def _event_kinds(db: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT job_id, kind FROM afterwork_events ORDER BY id").fetchall()


async def test_a_long_plain_job_has_its_start_written_and_can_be_cancelled(
    tmp_path: Path,
) -> None:
    aw = Afterwork(f"sqlite:///{tmp_path / 'jobs.db'}")
    app = FastAPI(lifespan=aw.lifespan)
    started = asyncio.Event()

    async def long_job() -> None:
        started.set()
        await asyncio.Event().wait()  # until cancelled

    @app.post("/long")
    async def route(jobs: Jobs) -> dict[str, str]:
        return {"id": jobs.add_task(long_job).id}

    async with app.router.lifespan_context(app), client(app) as http:
        request = asyncio.create_task(http.post("/long"))  # returns once the job ended
        await asyncio.wait_for(started.wait(), WAIT)
        (job_id,) = list(aw.local_runs.inline.behind._records) or [
            *aw.local_runs.inline._runs  # already written
        ]
        # Running past START_AFTER: its start is written, so other processes see it.
        row = await eventually(lambda: aw.backend.get(job_id), timeout=WAIT + START_AFTER)
        assert row.status is JobStatus.RUNNING
        cancelled = await aw.cancel(job_id)
        assert cancelled is not None
        response = await asyncio.wait_for(request, WAIT)
        assert response.json()["id"] == job_id
        done = await aw.wait_for_job(job_id, timeout=WAIT)
        assert done.status is JobStatus.CANCELLED


async def test_an_unwritten_job_can_be_cancelled_from_its_process(tmp_path: Path) -> None:
    aw = Afterwork(f"sqlite:///{tmp_path / 'jobs.db'}")
    app = FastAPI(lifespan=aw.lifespan)
    entered, release = threading.Event(), threading.Event()

    def blocking() -> None:
        entered.set()
        release.wait(WAIT)

    @app.post("/block")
    async def route(jobs: Jobs) -> dict[str, str]:
        return {"id": jobs.add_task(blocking).id}

    async with app.router.lifespan_context(app), client(app) as http:
        request = asyncio.create_task(http.post("/block"))
        await asyncio.to_thread(entered.wait, WAIT)
        behind = aw.local_runs.inline.behind
        job_id = next(iter(behind._records), None)
        if job_id is None:  # pragma: no cover - the machine paused us past START_AFTER
            release.set()
            pytest.skip("the job's start was written before the test looked")
        job = await aw.get_job(job_id)  # served from memory
        assert job is not None and job.status is JobStatus.RUNNING
        asked = await aw.cancel(job_id)
        assert asked is not None and asked.cancel_requested
        release.set()
        await asyncio.wait_for(request, WAIT)
        done = await aw.wait_for_job(job_id, timeout=WAIT)
        # A thread cannot be stopped: the job is recorded as cancelled when it returns.
        assert done.status is JobStatus.CANCELLED


def test_a_plain_job_starts_as_start_now_makes_it() -> None:
    # The write-behind builds the started job in one record: the same job, field by field.
    new = InlineRunner.plain_job("0" * 32, "tests:note", ("u", 3), {"k": [1, "x"]})
    made = started_job(new, "web-1", 1_700_000_000.25, 30.0)
    expected = life.start_now(new, worker="web-1", now=1_700_000_000.25, lease_ttl=30.0).job
    for item in dataclasses.fields(Job):
        assert getattr(made, item.name) == getattr(expected, item.name), item.name
    assert made.args is not new.args and made.kwargs is not new.kwargs


async def test_an_ended_unwritten_job_is_built_only_when_asked_for(tmp_path: Path) -> None:
    aw = Afterwork(f"sqlite:///{tmp_path / 'jobs.db'}")
    async with aw:
        inline = aw.local_runs.inline
        job_id = new_job_id()
        # The request path's call: the run returns nothing, its outcome is kept as it is.
        assert (
            await inline.run(job_id, note, ("u1",), {}, name="n", is_async=False, returns=False)
            is None
        )
        record = inline.behind.record(job_id)
        assert record is not None and record.outcome is not None and record.ended is None
        assert record.job.status is JobStatus.RUNNING  # the job as it ran
        job = await aw.get_job(job_id)  # built now, from the record
        assert job is not None and job.status is JobStatus.SUCCEEDED
        assert job.result == "noted u1" and job.finished_at == record.finished_at
        assert record.ended is not None
        await aw.join(timeout=WAIT)
        row = await aw.backend.get(job_id)
        assert row is not None
        for name in ("status", "result", "attempts", "worker", "error", "args"):
            assert getattr(row, name) == getattr(job, name), name
        assert [a.outcome for a in row.timeline] == [a.outcome for a in job.timeline]
        # Asked for its result, the run builds the ended job and returns it, as before.
        other = new_job_id()
        done = await inline.run(other, note, ("u2",), {}, name="n", is_async=False)
        assert done is not None and done.status is JobStatus.SUCCEEDED
        assert done.result == "noted u2"


async def test_a_middleware_gets_a_plain_job_as_it_ended(tmp_path: Path) -> None:
    aw = Afterwork(f"sqlite:///{tmp_path / 'jobs.db'}")
    seen: list[tuple[str, JobStatus | None]] = []

    @aw.middleware
    async def watch(call: JobCall, call_next: Any) -> Any:
        job = await call_next()
        seen.append((call.kind, None if job is None else job.status))
        return job

    app = FastAPI(lifespan=aw.lifespan)

    @app.post("/note/{user}")
    async def route(user: str, jobs: Jobs) -> dict[str, str]:
        return {"id": jobs.add_task(note, user).id}

    async with app.router.lifespan_context(app), client(app) as http:
        job_id = (await http.post("/note/u1")).json()["id"]
        assert seen == [("attempt", JobStatus.SUCCEEDED)]
        job = await aw.get_job(job_id)
        assert job is not None and job.status is JobStatus.SUCCEEDED and job.result == "noted u1"

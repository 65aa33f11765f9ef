"""docs/dependencies.md: its examples, run."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from examples.docs.dependencies import DATABASE, Database, app, audit, aw, get_database

from afterwork import JobStatus

from .conftest import ROOT, assert_blocks_are_code

pytestmark = pytest.mark.anyio


def test_the_page_shows_the_tested_code() -> None:
    assert_blocks_are_code(
        "dependencies.md", ROOT / "examples/docs/dependencies.py", Path(__file__)
    )


async def test_jobs_commit_on_success_and_roll_back_on_failure() -> None:
    before = len(DATABASE.rows)
    async with aw:
        ok = await audit.enqueue("export", 1)
        bad = await audit.enqueue("explode", 2)
        await aw.drain()
        assert (await ok.wait(timeout=10)).status is JobStatus.SUCCEEDED
        failed = await aw.get_job(bad.id)
    assert failed is not None and failed.status is JobStatus.SCHEDULED  # retried later
    assert DATABASE.rows[before:] == [f"user 1: export (job {ok.id})"]
    assert DATABASE.open_sessions == 0


async def test_overrides_through_the_app() -> None:
    test_database = Database()
    app.dependency_overrides[get_database] = lambda: test_database
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                response = await client.post("/login", params={"user_id": 7})
            job = await aw.get_job(response.json()["job"])
            assert job is not None
            await job.wait(timeout=10)
    finally:
        app.dependency_overrides.clear()
    # Both sessions committed to the overriding database. Their order is not promised: the
    # route's session commits as its dependency exits (a sync generator, in a thread) while
    # the in-process worker may already have run the job and committed its own.
    assert sorted(test_database.rows) == sorted(
        ["user 7 logged in", f"user 7: login (job {job.id})"]
    )
    assert test_database.open_sessions == 0

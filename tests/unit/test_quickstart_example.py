"""The README's quick start is a test: it runs as documented."""

from __future__ import annotations

import httpx
import pytest

from afterwork import JobStatus

from ..servers import serve
from ..waiting import eventually

pytestmark = pytest.mark.anyio


async def test_quickstart_signup_runs_its_jobs() -> None:
    from examples.quickstart.app import app, aw

    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.post("/signup", params={"email": "ada@example.com"})
        assert response.status_code == 200
        ids = response.json()
        report = await aw.wait_for_job(ids["report_job"], timeout=10)
        assert report.status is JobStatus.SUCCEEDED
        assert report.result == "report for ada@example.com" and report.progress == 1.0

        async def welcome_done() -> dict[str, object] | None:
            body = (await client.get(f"/jobs/{ids['welcome_job']}")).json()
            return body if body.get("status") == "succeeded" else None

        welcome = await eventually(welcome_done)
        assert welcome["result"] == {"sent_to": "ada@example.com"}
        assert (await client.get("/jobs/nope")).status_code == 404

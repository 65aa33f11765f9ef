"""docs/bridging.md: each context's way to enqueue and to call async code, run there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from examples.docs.bridging import (
    app,
    aw,
    export,
    fetch_total,
    main,
    nightly,
    on_message,
    send_report,
    sync_script,
)

from afterwork import JobStatus

from .conftest import ROOT, assert_blocks_are_code


def test_the_page_shows_the_tested_code() -> None:
    assert_blocks_are_code("bridging.md", ROOT / "examples/docs/bridging.py")


async def reports_sent(job_ids: list[str]) -> list[object]:
    results = []
    for job_id in job_ids:
        job = await aw.get_job(job_id)
        assert job is not None
        results.append((await job.wait(timeout=10)).result)
    return results


@pytest.mark.anyio
async def test_async_and_def_routes() -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            from_async = (await client.post("/reports/async")).json()
            from_def = (await client.post("/reports/sync")).json()
        assert from_async["total"] == from_def["total"] == 42
        assert await reports_sent([from_async["job"], from_def["job"]]) == [
            "report async route sent",
            "report def route sent",
        ]


@pytest.mark.anyio
async def test_another_thread_and_jobs(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with aw, aw.worker():
        # A thread of a plain executor: not started by anyio, not on the loop.
        total = await loop.run_in_executor(None, on_message, "from a thread", loop)
        assert total == 42
        ran = [
            await nightly.enqueue(str(tmp_path / "nightly.txt")),
            await export.enqueue(str(tmp_path / "export.txt")),
        ]
        done = [await job.wait(timeout=10) for job in ran]
        assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 2
        assert [job.result for job in done] == [42, 42]
        sent = await aw.list_jobs(task=send_report.name, limit=1000)
        assert {"from a thread", "nightly", "export"} <= {job.args[0] for job in sent}
    assert (tmp_path / "nightly.txt").read_text() == "42"
    assert (tmp_path / "export.txt").read_text() == "42"


def test_scripts() -> None:
    # No event loop runs here, as in a script.
    job_id = sync_script()
    assert aw.run_sync(lambda: aw.get_job(job_id)) is not None
    aw.run_sync(aw.aclose)
    enqueued, total = asyncio.run(main()).split(": ")
    assert total == "42" and enqueued != job_id


@pytest.mark.anyio
async def test_enqueue_sync_on_the_loop_thread_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"await task.enqueue"):
        send_report.enqueue_sync("wrong")
    assert await fetch_total() == 42

"""docs/observability.md: the code shown is the code run."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import pytest

from afterwork import JobStatus

from ..servers import serve
from ..waiting import eventually
from .conftest import ROOT

pytestmark = pytest.mark.anyio

T = TypeVar("T")


def test_the_page_shows_the_tested_example() -> None:
    text = (ROOT / "docs" / "observability.md").read_text()
    code = (ROOT / "examples/docs/observability.py").read_text()
    assert f"```python\n{code}```" in text


async def test_the_middleware_and_metrics_example(caplog: pytest.LogCaptureFixture) -> None:
    from examples.docs import observability as ex

    async with serve(ex.app) as url:
        with caplog.at_level(logging.INFO, logger="app.jobs"):
            job = await ex.resize.enqueue("cat.png")
            done = await job.wait(timeout=10)

            def logs() -> list[str] | None:  # the middleware logs once call_next returned
                found = [r.getMessage() for r in caplog.records if r.name == "app.jobs"]
                return found if len(found) == 2 and ex.audit else None

            logged = await eventually(_async(logs))
        assert done.status is JobStatus.SUCCEEDED and done.result == "cat.png resized"
        assert ex.audit == [f"{ex.resize.name} attempt 1: succeeded"]
        assert [m.split(" in ")[0] for m in logged] == [
            f"enqueue {ex.resize.name}: queued",
            f"attempt {ex.resize.name}: succeeded",
        ]
        async with httpx.AsyncClient(base_url=f"{url}/afterwork") as client:
            denied = await client.get("/metrics")
            scraped = await client.get("/metrics", headers={"Authorization": "Bearer admin-token"})
    assert denied.status_code == 401 and scraped.status_code == 200
    line = (
        f'afterwork_jobs_total{{outcome="succeeded",queue="default",task="{ex.resize.name}"}} 1.0'
    )
    assert line in scraped.text.splitlines()


def _async(check: Callable[[], T | None]) -> Callable[[], Awaitable[T | None]]:
    async def run() -> T | None:
        return check()

    return run


def test_the_page_shows_the_history_example() -> None:
    text = (ROOT / "docs" / "observability.md").read_text()
    code = (ROOT / "examples/docs/history.py").read_text()
    assert f"```python\n{code}```" in text


async def test_the_history_example() -> None:
    from examples.docs import history as ex

    async with ex.aw:
        for day in ("mon", "tue", "wed"):
            await ex.send_report.enqueue(day)
        assert await ex.aw.drain() == 3
        await ex.history.flush()
        ((task, attempts, failures, p95),) = await ex.last_hour()
    assert (task, attempts, failures) == (ex.send_report.name, 3, 0)
    assert p95 is not None and p95 < 1.0

"""docs/fastapi.md: its examples, run."""

from __future__ import annotations

from pathlib import Path

import pytest
from examples.docs.fastapi_app import AUDIT, app, aw, log_visit
from fastapi.testclient import TestClient

from afterwork import JobStatus
from afterwork.exceptions import DependencyError
from afterwork.fastapi import JobsManager

from .conftest import ROOT, assert_blocks_are_code


def test_the_page_shows_the_tested_code() -> None:
    assert_blocks_are_code(
        "fastapi.md",
        ROOT / "examples/docs/fastapi_app.py",
        ROOT / "examples/docs/progress_app.py",
        Path(__file__),
    )


def test_routers_mounted_apps_and_depends() -> None:
    AUDIT.clear()
    client = TestClient(app)
    first = client.post("/users/signup").json()["job"]
    second = client.post("/admin/purge").json()["job"]
    client.post("/visit")
    assert AUDIT == ["signup", "purge", "visit from testclient"]
    for job_id in (first, second):
        job = aw.run_sync(lambda job_id=job_id: aw.get_job(job_id))  # type: ignore[misc]
        assert job is not None and job.status is JobStatus.SUCCEEDED


def test_request_bound_dependencies_are_refused() -> None:
    from fastapi import BackgroundTasks

    with pytest.raises(DependencyError, match="outside the request"):
        JobsManager(aw, BackgroundTasks()).add_task(log_visit)  # type: ignore[call-overload]


def test_a_response_with_its_own_background() -> None:
    AUDIT.clear()
    TestClient(app).get("/download")
    assert AUDIT == ["theirs"]
    cancelled = aw.run_sync(
        lambda: aw.list_jobs(status=JobStatus.CANCELLED, task="examples.docs.fastapi_app:audit")
    )
    assert cancelled and cancelled[0].error is not None
    assert cancelled[0].error.type == "afterwork.NeverRun"


def test_the_browser_example_is_the_page_the_app_serves() -> None:
    import re

    from examples.docs.progress_app import PAGE

    text = (ROOT / "docs/fastapi.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```html\n(.*?)```", text, flags=re.DOTALL)
    assert block.strip() in PAGE


@pytest.mark.anyio
async def test_publish_and_subscribe() -> None:
    from afterwork import Afterwork

    aw = Afterwork("memory://")  # SQLite and Redis: every process sharing the store
    seen: list[object] = []
    async with aw:
        async with aw.subscribe("queue-screen") as messages:  # subscribed from here on
            await aw.publish("queue-screen", {"ticket": "A002", "room": "102"})
            async for message in messages:
                if message.missed:  # this subscriber fell behind: reload what it shows
                    continue
                seen.append(message.data)
                break
    assert seen == [{"ticket": "A002", "room": "102"}]

"""Every id ``jobs.add_task`` hands out exists (issue 16), and call order with
``BackgroundTasks``."""

from __future__ import annotations

import logging

import pytest
from fastapi import BackgroundTasks, FastAPI
from fastapi.testclient import TestClient
from starlette.background import BackgroundTask
from starlette.responses import Response

from afterwork import Afterwork, JobStatus
from afterwork.fastapi import Jobs, JobsManager


@pytest.mark.parametrize("eager", [False, True])
def test_tasks_of_a_route_returning_its_own_background_are_recorded_cancelled(
    eager: bool, caplog: pytest.LogCaptureFixture
) -> None:
    aw = Afterwork("memory://", eager=eager)
    app = FastAPI(lifespan=aw.lifespan)
    ran: list[str] = []
    ids: list[str] = []

    @aw.task
    def registered(name: str) -> None:
        ran.append(name)

    @app.get("/")
    async def route(jobs: Jobs) -> Response:
        ids.append(jobs.add_task(ran.append, "plain").id)
        ids.append(jobs.add_task(registered, "registered").id)
        return Response("x", background=BackgroundTask(ran.append, "theirs"))

    caplog.set_level(logging.INFO, logger="afterwork")
    client = TestClient(app)
    assert client.get("/").status_code == 200
    assert ran == ["theirs"]
    plain = aw.run_sync(lambda: aw.get_job(ids[0]))
    assert plain is not None and plain.status is JobStatus.CANCELLED
    assert plain.error is not None and plain.error.type == "afterwork.NeverRun"
    assert "background of its own" in plain.error.message
    job = aw.run_sync(lambda: aw.get_job(ids[1]))
    assert job is not None
    if eager:  # it would have run after the response: recorded as never run
        assert job.status is JobStatus.CANCELLED
    else:  # stored before the response: a worker runs it
        assert job.status is JobStatus.QUEUED
    never = [r for r in caplog.records if getattr(r, "action", None) == "add_task_never_run"]
    assert len(never) == 1
    assert never[0].__dict__["jobs"] == (ids if eager else ids[:1])


def test_jobs_and_background_tasks_run_in_call_order() -> None:
    aw = Afterwork("memory://", eager=True)
    app = FastAPI(lifespan=aw.lifespan)
    order: list[str] = []

    @aw.task
    def registered(name: str) -> None:
        order.append(name)

    @app.get("/")
    async def route(jobs: Jobs, background: BackgroundTasks) -> None:
        background.add_task(order.append, "background-1")
        jobs.add_task(order.append, "jobs-2")
        background.add_task(order.append, "background-3")
        jobs.add_task(registered, "registered-4")
        background.add_task(order.append, "background-5")

    TestClient(app).get("/")
    assert order == ["background-1", "jobs-2", "background-3", "registered-4", "background-5"]


def test_a_route_that_raised_records_nothing(caplog: pytest.LogCaptureFixture) -> None:
    aw = Afterwork("memory://")
    app = FastAPI(lifespan=aw.lifespan)
    ids: list[str] = []

    @app.get("/")
    async def route(jobs: Jobs) -> None:
        ids.append(jobs.add_task(print, "never").id)
        raise RuntimeError("boom")

    caplog.set_level(logging.INFO, logger="afterwork")
    response = TestClient(app, raise_server_exceptions=False).get("/")
    assert response.status_code == 500
    assert aw.run_sync(lambda: aw.get_job(ids[0])) is None
    assert not [r for r in caplog.records if getattr(r, "action", None) == "add_task_never_run"]


def test_add_task_after_the_request_is_over_is_refused() -> None:
    aw = Afterwork("memory://")
    app = FastAPI(lifespan=aw.lifespan)
    kept: list[JobsManager] = []

    @app.get("/")
    async def route(jobs: Jobs) -> None:
        kept.append(jobs)

    TestClient(app).get("/")
    with pytest.raises(RuntimeError, match="after the request is over"):
        kept[0].add_task(print, "late")


def test_a_dependency_adding_a_task_after_its_yield_runs_it() -> None:
    from collections.abc import AsyncIterator

    from fastapi import Depends

    aw = Afterwork("memory://", eager=True)
    app = FastAPI(lifespan=aw.lifespan)
    ran: list[str] = []
    ids: list[str] = []

    @aw.task
    def registered(name: str) -> None:
        ran.append(name)

    async def auditor(jobs: Jobs) -> AsyncIterator[None]:
        yield
        ids.append(jobs.add_task(ran.append, "plain").id)
        ids.append(jobs.add_task(registered, "registered").id)

    @app.get("/", dependencies=[Depends(auditor, scope="function")])
    async def route() -> None:
        return None

    TestClient(app).get("/")
    assert ran == ["plain", "registered"]
    for job_id in ids:
        job = aw.run_sync(lambda job_id=job_id: aw.get_job(job_id))  # type: ignore[misc]
        assert job is not None and job.status is JobStatus.SUCCEEDED


@pytest.mark.anyio
@pytest.mark.parametrize("last", ["job", "starlette", "none ran"])
async def test_a_task_added_after_the_background_tasks_ran_says_so(last: str) -> None:
    # The request's background tasks mark that they ran: by the run of the last of them
    # when it is a job's, by a marker task otherwise; a task added later never runs.
    from fastapi import BackgroundTasks

    from afterwork.fastapi import JobsManager

    aw = Afterwork("memory://")
    async with aw:
        background = BackgroundTasks()
        manager = JobsManager(aw, background)
        manager._managed = True
        ran: list[str] = []
        if last == "starlette":
            manager.add_task(ran.append, "early")
            background.add_task(ran.append, "starlette")
        else:
            background.add_task(ran.append, "starlette")
            manager.add_task(ran.append, "early")
        manager._mark_when_background_ran()  # the route returned
        if last != "none ran":
            await background()
        late = manager.add_task(ran.append, "late").id
        await manager.finish_request()
        job = await aw.get_job(late)
        assert job is not None and job.status is JobStatus.CANCELLED
        assert job.error is not None and job.error.type == "afterwork.NeverRun"
        if last == "none ran":
            assert "background of its own" in job.error.message
        else:
            assert sorted(ran) == ["early", "starlette"]
            assert "after the request's background tasks had run" in job.error.message

"""``Jobs.add_task``: BackgroundTasks' signature, but every task tracked."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from afterwork import Afterwork, Job, JobStatus, Retry
from afterwork.fastapi import Jobs
from afterwork.testing import FakeClock

from ..servers import serve
from ..waiting import eventually

pytestmark = pytest.mark.anyio

WAIT = 10


async def stored(aw: Afterwork, job_id: str) -> Job:
    """The job once the after-response code has stored it."""
    return await eventually(lambda: aw.get_job(job_id), timeout=WAIT)


async def test_add_task_runs_after_response_and_is_tracked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aw = Afterwork("memory://", poll_interval=0.1)
    app = FastAPI(lifespan=aw.lifespan)
    gate = asyncio.Event()
    log: list[str] = []
    attempts: list[int] = []

    async def slow_notify(user: str, *, greeting: str) -> None:
        await gate.wait()  # only the test opens it, after it got the response
        log.append(f"{greeting} {user}")

    def broken(user: str) -> None:
        raise RuntimeError(f"mailer down for {user}")

    @aw.task(retries=2, backoff=Retry.fixed(0))
    async def registered(user: str) -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 2:
            raise ConnectionError("flaky")
        return f"welcomed {user}"

    @app.post("/signup/{user}")
    async def signup(user: str, jobs: Jobs) -> dict[str, Any]:
        a = jobs.add_task(slow_notify, user, greeting="hello")
        b = jobs.add_task(broken, user)
        c = jobs.add_task(registered, user)
        return {"ids": [a.id, b.id, c.id]}

    caplog.set_level(logging.INFO, logger="afterwork")
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/signup/ada", timeout=WAIT)
        assert response.status_code == 200
        slow_id, broken_id, registered_id = response.json()["ids"]
        # The response came back while the first task was still waiting on the gate.
        assert log == []
        job = await stored(aw, slow_id)
        assert job.status is JobStatus.RUNNING
        assert job.task.endswith("slow_notify") and job.args == ["'ada'"]
        gate.set()
        done = await aw.wait_for_job(slow_id, timeout=WAIT)
        # Like BackgroundTasks, the tasks run one after the other, after the response.
        failed = await aw.wait_for_job((await stored(aw, broken_id)).id, timeout=WAIT)
        welcomed = await aw.wait_for_job((await stored(aw, registered_id)).id, timeout=WAIT)
    assert log == ["hello ada"]
    assert done.status is JobStatus.SUCCEEDED
    # The failure is recorded on the job and did not stop the tasks after it.
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error.message == "mailer down for ada"
    assert "RuntimeError: mailer down for ada" in failed.error.traceback
    # The registered task kept its retry policy and ran on the in-process worker.
    assert welcomed.status is JobStatus.SUCCEEDED and welcomed.result == "welcomed ada"
    assert welcomed.attempts == 2 and attempts == [1, 2]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and broken_id in errors[0].getMessage()
    assert errors[0].exc_info is not None


async def test_add_task_validates_registered_task_arguments_in_the_route() -> None:
    aw = Afterwork("memory://")
    app = FastAPI(lifespan=aw.lifespan(worker=False))

    @aw.task
    async def typed(n: int) -> None: ...

    @app.post("/bad")
    async def bad(jobs: Jobs) -> None:
        jobs.add_task(typed, "not a number")

    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/bad", timeout=WAIT)
    assert response.status_code == 500  # the route's own bug surfaces in the route
    assert await aw.list_jobs() == []


async def test_jobs_without_lifespan_explains_itself() -> None:
    app = FastAPI()

    @app.post("/x")
    async def route(jobs: Jobs) -> None: ...

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.raises(RuntimeError, match="lifespan"):
            await client.post("/x")


async def test_lifespan_composes_with_the_apps_own() -> None:
    aw = Afterwork("memory://")
    order: list[str] = []

    @aw.task
    async def ping() -> str:
        return "pong"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with aw.lifespan(app):
            order.append("app startup")
            yield
            order.append("app shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.post("/ping")
    async def route() -> dict[str, str]:
        job = await ping.enqueue()
        return {"id": job.id}

    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        job_id = (await client.post("/ping", timeout=WAIT)).json()["id"]
        done = await aw.wait_for_job(job_id, timeout=WAIT)
        assert aw.is_open
    assert done.result == "pong"
    assert order == ["app startup", "app shutdown"]
    assert not aw.is_open


async def test_add_task_keeps_its_lease_with_heartbeats_on_the_clock() -> None:
    clock = FakeClock()
    aw = Afterwork("memory://", clock=clock, lease_ttl=30.0)
    app = FastAPI(lifespan=aw.lifespan)
    gate = asyncio.Event()

    async def long_export() -> None:
        await gate.wait()

    @app.post("/export")
    async def export(jobs: Jobs) -> dict[str, str]:
        return {"id": jobs.add_task(long_export).id}

    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/export", timeout=WAIT)
        job_id = response.json()["id"]
        assert (await stored(aw, job_id)).status is JobStatus.RUNNING
        # The in-process job's heartbeat, and the lifespan worker's heartbeat, reaper, poll.
        await clock.wait_sleepers(4)
        await clock.pass_time(300)  # ten lease lifetimes: the reaper finds nothing expired
        running = await aw.get_job(job_id)
        assert running is not None and running.status is JobStatus.RUNNING
        assert running.recoveries == 0
        gate.set()
        done = await aw.wait_for_job(job_id, timeout=WAIT)
    assert done.status is JobStatus.SUCCEEDED

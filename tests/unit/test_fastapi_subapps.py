"""``Jobs`` in mounted sub-applications and included routers (issue 16)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from afterwork import Afterwork, JobStatus
from afterwork.fastapi import Jobs


def build(aw: Afterwork, app: FastAPI, ran: list[str]) -> None:
    @aw.task
    def registered(where: str) -> None:
        ran.append(f"registered {where}")

    sub = FastAPI()  # a mounted app's lifespan never runs

    @sub.post("/signup")
    async def sub_route(jobs: Jobs) -> dict[str, str]:
        jobs.add_task(ran.append, "plain sub")
        return {"id": jobs.add_task(registered, "sub").id}

    router = APIRouter(prefix="/users")

    @router.post("/signup")
    async def router_route(jobs: Jobs) -> dict[str, str]:
        jobs.add_task(ran.append, "plain router")
        return {"id": jobs.add_task(registered, "router").id}

    nested = APIRouter()
    nested.include_router(router)
    app.include_router(nested)
    app.mount("/sub", sub)


@pytest.mark.parametrize("with_lifespan", [True, False])
def test_a_mounted_app_and_included_routers_find_the_instance(with_lifespan: bool) -> None:
    aw = Afterwork("memory://", eager=not with_lifespan)
    app = FastAPI(lifespan=aw.lifespan)
    ran: list[str] = []
    build(aw, app, ran)
    if with_lifespan:
        with TestClient(app) as client:
            ids = [client.post(p).json()["id"] for p in ("/sub/signup", "/users/signup")]
            aw.join_sync(timeout=10)
    else:
        client = TestClient(app)
        ids = [client.post(p).json()["id"] for p in ("/sub/signup", "/users/signup")]
    assert sorted(ran) == ["plain router", "plain sub", "registered router", "registered sub"]
    for job_id in ids:
        job = aw.run_sync(lambda job_id=job_id: aw.get_job(job_id))  # type: ignore[misc]
        assert job is not None and job.status is JobStatus.SUCCEEDED


def test_a_lifespan_of_your_own_entering_aw_lifespan_serves_mounted_apps() -> None:
    aw = Afterwork("memory://")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with aw.lifespan(app):
            yield

    app = FastAPI(lifespan=lifespan)
    ran: list[str] = []
    build(aw, app, ran)
    with TestClient(app) as client:
        client.post("/sub/signup")
        aw.join_sync(timeout=10)
    assert sorted(ran) == ["plain sub", "registered sub"]


def test_attach_where_nothing_can_be_found() -> None:
    aw = Afterwork("memory://", eager=True)
    app = FastAPI()  # a lifespan that is not afterwork's, not run
    ran: list[str] = []
    build(aw, app, ran)
    client = TestClient(app)
    with pytest.raises(RuntimeError, match=r"aw\.attach\(app\)"):
        client.post("/sub/signup")
    aw.attach(app)
    client.post("/sub/signup")
    assert sorted(ran) == ["plain sub", "registered sub"]

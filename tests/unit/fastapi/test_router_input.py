"""Bad enqueue options over HTTP: a 422 naming the field, and nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI

from afterwork import Afterwork

from ...integration.conftest import AUTH, CSRF, require_admin

pytestmark = pytest.mark.anyio

POST = {**AUTH, **CSRF, "Content-Type": "application/json"}


@pytest.fixture
async def aw(tmp_path: Path) -> AsyncIterator[Afterwork]:
    instance = Afterwork(f"sqlite:///{tmp_path}/afterwork.db")

    @instance.task(name="echo")
    async def echo(value: str) -> str:
        return value

    yield instance
    await instance.aclose()


@pytest.fixture
async def client(aw: Afterwork) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(aw.router(auth=Depends(require_admin)), prefix="/afterwork")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ('{"priority": 9223372036854775808}', "priority"),
        ('{"priority": -1001}', "priority"),
        ('{"delay": Infinity}', "delay"),
        ('{"delay": NaN}', "delay"),
        ('{"delay": 1e400}', "delay"),
        ('{"delay": 1e12}', "delay"),
        ('{"key": "\\ud800"}', "key"),
        ('{"key": "a\\u0000b"}', "key"),
        ('{"queue": "q\\u0000"}', "queue"),
        ('{"queue": "\\udfff"}', "queue"),
        ('{"queue": "\\u001b[31m"}', "queue"),
    ],
)
async def test_bad_options_get_422_naming_the_field(
    client: httpx.AsyncClient, aw: Afterwork, options: str, field: str
) -> None:
    body = f'{{"args": ["x"], "options": {options}}}'
    response = await client.post("/afterwork/tasks/echo/enqueue", content=body, headers=POST)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(error["loc"][:3] == ["body", "options", field] for error in detail), detail
    assert await aw.list_jobs() == []


async def test_options_at_the_limits_are_stored(client: httpx.AsyncClient, aw: Afterwork) -> None:
    body = '{"args": ["x"], "options": {"priority": 1000, "delay": 315360000, "key": "k\\u00e9"}}'
    response = await client.post("/afterwork/tasks/echo/enqueue", content=body, headers=POST)
    assert response.status_code == 201, response.text
    job = await aw.get_job(response.json()["id"])
    assert job is not None
    assert (job.priority, job.key) == (1000, "k\u00e9")

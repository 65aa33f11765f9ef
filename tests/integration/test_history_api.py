"""``GET /history`` of the router, through a real server."""

from __future__ import annotations

import httpx
import pytest
from fastapi import Depends, FastAPI

from afterwork import Afterwork
from afterwork.history import History
from afterwork.testing import FakeClock

from ..servers import serve
from .conftest import AUTH, require_admin

pytestmark = pytest.mark.anyio


async def test_the_router_serves_history_grouped_or_totalled() -> None:
    clock = FakeClock()
    aw = Afterwork("memory://", clock=clock)
    history = History(aw)

    @aw.task(name="ok")
    async def ok() -> None: ...

    @aw.task(name="bad", queue="q2")
    async def bad() -> None:
        raise ValueError("no")

    app = FastAPI(lifespan=aw.lifespan(worker=False))
    app.include_router(aw.router(auth=Depends(require_admin)), prefix="/aw")
    async with serve(app) as url, httpx.AsyncClient(base_url=f"{url}/aw") as client:
        await ok.enqueue()
        await ok.enqueue()
        await bad.enqueue()
        assert await aw.drain() == 3
        await history.flush()
        minute = clock() - clock() % 60.0

        assert (await client.get("/history")).status_code == 401  # behind the router's auth
        grouped = (await client.get("/history", headers=AUTH)).json()
        assert [(p["at"], p["task"], p["queue"], p["succeeded"], p["failed"]) for p in grouped] == [
            (minute, "bad", "q2", 0, 1),
            (minute, "ok", "default", 2, 0),
        ]
        totals = (
            await client.get(
                "/history", params={"by": "none", "since": minute - 600, "step": 3600},
                headers=AUTH,
            )
        ).json()  # fmt: skip
        assert [(p["task"], p["attempts"], p["failed"]) for p in totals] == [(None, 3, 1)]
        by_queue = await client.get("/history", params={"by": "queue", "task": "ok"}, headers=AUTH)
        assert [(p["queue"], p["succeeded"]) for p in by_queue.json()] == [("default", 2)]
        bad_step = await client.get("/history", params={"step": 90}, headers=AUTH)
        assert bad_step.status_code == 422
    await aw.aclose()

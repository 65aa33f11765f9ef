"""docs/transactions.md: the code shown is the code run (on real SQLite files)."""

from __future__ import annotations

import importlib
import sqlite3
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from afterwork import JobStatus

from .conftest import ROOT, assert_blocks_are_code

pytestmark = pytest.mark.anyio


def test_the_page_shows_the_tested_code() -> None:
    assert_blocks_are_code("transactions.md", ROOT / "examples/docs/transactions.py")


@pytest.fixture
def ex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example, imported afresh in a temporary directory (its paths are relative)."""
    monkeypatch.chdir(tmp_path)
    from examples.docs import transactions

    return importlib.reload(transactions)


def stored(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_the_route_commits_the_order_and_its_job_together(
    ex: ModuleType, tmp_path: Path
) -> None:
    async with ex.lifespan(ex.app):
        transport = httpx.ASGITransport(app=ex.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            created = (await client.post("/orders", params={"email": "ada@example.com"})).json()
        done = await ex.aw.get_job(created["job"])
        assert done is not None
        done = await done.wait(timeout=10)
        assert done.status is JobStatus.SUCCEEDED
    assert ex.sent == [created["order"]]
    assert stored(tmp_path / "app.db", "SELECT id, email FROM orders") == [
        (created["order"], "ada@example.com")
    ]


async def test_enqueue_many_and_a_core_connection(ex: ModuleType, tmp_path: Path) -> None:
    async with ex.engine.begin() as conn:
        await conn.run_sync(ex.Base.metadata.create_all)
    async with ex.aw:
        jobs = await ex.import_orders(["a@example.com", "b@example.com"])
        core = await ex.add_order_core("c@example.com")
        assert all(job.created_now for job in [*jobs, core])
        assert await ex.aw.drain() == 3
    await ex.engine.dispose()
    assert sorted(ex.sent) == [1, 2, 3]


async def test_a_rolled_back_order_leaves_no_job(ex: ModuleType, tmp_path: Path) -> None:
    async with ex.engine.begin() as conn:
        await conn.run_sync(ex.Base.metadata.create_all)
    async with ex.aw:
        async with ex.Session() as db:
            order = ex.Order(email="gone@example.com")
            db.add(order)
            await db.flush()
            job = await ex.send_receipt.options(connection=db).enqueue(order.id)
            await db.rollback()
        assert await ex.aw.get_job(job.id) is None
        assert await ex.aw.drain() == 0
    await ex.engine.dispose()
    assert ex.sent == []

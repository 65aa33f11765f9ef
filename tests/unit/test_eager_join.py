"""Eager mode, ``join`` / ``join_sync``, lazy opening and the testing fixtures (issue 16)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from afterwork import Afterwork, EnqueueError, JobStatus, Retry
from afterwork.fastapi import Jobs
from afterwork.testing import FakeClock, eager

from ..waiting import eventually


@pytest.mark.anyio
async def test_eager_enqueue_runs_the_job_before_it_returns_with_json_round_tripped_args() -> None:
    aw = Afterwork("memory://", eager=True)
    seen: list[Any] = []

    @aw.task
    async def record(when: dict[str, int], names: tuple[str, ...]) -> str:
        seen.append((when, names))
        return "ok"

    async with aw:
        job = await record.enqueue({"a": 1}, ("x", "y"))
        assert job.status is JobStatus.SUCCEEDED and job.result == "ok"
        # The function saw what a worker would: the arguments decoded from JSON.
        assert seen == [({"a": 1}, ("x", "y"))]
        with pytest.raises(EnqueueError):
            await record.enqueue("not a dict", ())
        assert len(seen) == 1


@pytest.mark.anyio
async def test_eager_failure_with_retries_left_is_scheduled_and_join_runs_it_when_due() -> None:
    clock = FakeClock()
    aw = Afterwork("memory://", eager=True, clock=clock)
    attempts: list[int] = []

    @aw.task(retries=1, backoff=Retry.fixed(30))
    async def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("down")

    async with aw:
        job = await flaky.enqueue()
        assert job.status is JobStatus.SCHEDULED
        await aw.join(timeout=5)  # not due yet: nothing to wait for
        assert len(attempts) == 1
        clock.advance(30)
        await aw.join(timeout=5)  # due now: eager mode runs it
        assert len(attempts) == 2
        finished = await aw.get_job(job.id)
        assert finished is not None and finished.status is JobStatus.SUCCEEDED


@pytest.mark.anyio
async def test_join_waits_for_a_worker_and_times_out_without_one() -> None:
    aw = Afterwork("memory://", poll_interval=0.05)
    done: list[int] = []

    @aw.task
    async def work(n: int) -> None:
        done.append(n)

    async with aw:
        for n in range(5):
            await work.enqueue(n)
        with pytest.raises(TimeoutError, match="5 job\\(s\\) still due or running"):
            await aw.join(timeout=0.2)
        async with aw.worker():
            await aw.join(timeout=10)
            assert sorted(done) == [0, 1, 2, 3, 4]


def test_join_sync_from_a_test_after_a_testclient_call_without_with() -> None:
    aw = Afterwork("memory://")
    app = FastAPI(lifespan=aw.lifespan)
    done: list[int] = []

    @aw.task
    def work(n: int) -> None:
        done.append(n)

    @app.post("/{n}")
    async def route(n: int, jobs: Jobs) -> dict[str, str]:
        return {"id": jobs.add_task(work, n).id}

    client = TestClient(app)
    job_id = client.post("/3").json()["id"]
    assert done == []  # stored, not run: no worker and not eager
    with pytest.raises(TimeoutError):
        aw.join_sync(timeout=0.2)
    with eager(aw):
        aw.join_sync(timeout=10)
    assert done == [3]
    assert aw.eager is False
    job = aw.run_sync(lambda: aw.get_job(job_id))
    assert job is not None and job.status is JobStatus.SUCCEEDED


def test_jobs_without_the_lifespan_opens_the_store_lazily_and_says_so_once(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    aw = Afterwork(f"sqlite:///{tmp_path}/aw.db", eager=True)
    app = FastAPI(lifespan=aw.lifespan(worker=False))
    done: list[int] = []

    @aw.task
    def work(n: int) -> None:
        done.append(n)

    @app.post("/{n}")
    async def route(n: int, jobs: Jobs) -> None:
        jobs.add_task(work, n)

    caplog.set_level(logging.INFO, logger="afterwork")
    client = TestClient(app)  # no ``with``: each request runs on an event loop of its own
    for n in range(3):
        assert client.post(f"/{n}").status_code == 200
    assert done == [0, 1, 2]
    lazy = [r for r in caplog.records if getattr(r, "action", None) == "jobs_lazy_open"]
    assert len(lazy) == 1
    assert "opens on first use" in lazy[0].getMessage()


def test_attach_for_an_app_whose_lifespan_is_its_own() -> None:
    aw = Afterwork("memory://")
    app = FastAPI()
    ran: list[str] = []

    @app.post("/")
    async def route(jobs: Jobs) -> None:
        jobs.add_task(ran.append, "x")

    client = TestClient(app)
    with pytest.raises(RuntimeError, match=r"aw\.attach\(app\)"):
        client.post("/")
    aw.attach(app)
    assert client.post("/").status_code == 200
    assert ran == ["x"]


@pytest.mark.anyio
async def test_jobs_tasks_run_in_call_order_in_eager_mode() -> None:
    aw = Afterwork("memory://", eager=True)
    app = FastAPI(lifespan=aw.lifespan)
    order: list[str] = []

    @aw.task
    def registered(name: str) -> None:
        order.append(name)

    @app.post("/")
    async def route(jobs: Jobs) -> None:
        jobs.add_task(order.append, "plain-1")
        jobs.add_task(registered, "registered-2")
        jobs.add_task(order.append, "plain-3")
        jobs.add_task(registered, "registered-4")

    import httpx

    async with aw:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.post("/")
        await eventually(lambda: _at_least(order, 4), timeout=10)
    assert order == ["plain-1", "registered-2", "plain-3", "registered-4"]


async def _at_least(items: list[str], n: int) -> bool | None:
    return True if len(items) >= n else None


def test_the_pytest_fixtures(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            import pytest
            import afterwork.testing
            from afterwork import Afterwork

            afterwork.testing.JOIN_TIMEOUT = 0.5
            pytest_plugins = ["afterwork.testing"]
            aw = Afterwork("memory://")
            ran = []

            @aw.task
            def work(n: int) -> None:
                ran.append(n)

            @pytest.fixture
            def afterwork_app():
                return aw
            """
        )
    )
    (tmp_path / "test_it.py").write_text(
        textwrap.dedent(
            """
            from conftest import aw, ran, work

            def test_eager(afterwork_eager):
                assert afterwork_eager is aw and aw.eager
                aw.run_sync(lambda: work.enqueue(1))
                assert ran == [1]

            def test_back_to_normal_and_joined(afterwork_joined):
                assert not aw.eager
                aw.run_sync(lambda: work.enqueue(2))
                assert ran == [1]
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    # The second test's teardown joins with no worker: it errors, which proves it waited.
    assert re.search(r"\b2 passed\b.*\b1 error\b", result.stdout), result.stdout + result.stderr
    assert "still due or running" in result.stdout

"""enqueue_sync from every context: a script, a def route, another thread, the loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from afterwork import Afterwork, JobStatus


def test_enqueue_sync_from_a_plain_script(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, threading
            from afterwork import Afterwork, JobStatus

            aw = Afterwork("memory://")

            @aw.task
            def double(n: int) -> int:
                return 2 * n

            job = double.enqueue_sync(21)          # no loop anywhere: a private one is used
            again = double.enqueue_sync(1)         # and reused
            assert job.status is JobStatus.QUEUED, job
            assert [t.name for t in threading.enumerate() if t.name == "afterwork-portal"]
            # The stored job is visible from a fresh loop of the caller's own.
            async def check():
                got = await aw.get_job(job.id)
                assert got is not None and got.args == [21], got
                assert await aw.drain() == 2
                done = await aw.get_job(job.id)
                assert done.result == 42, done
            asyncio.run(check())
            print("ok")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "already running" not in result.stderr


def test_enqueue_sync_from_a_def_route_and_another_thread() -> None:
    aw = Afterwork("memory://")
    app = FastAPI(lifespan=aw.lifespan(worker=False))

    @aw.task
    def record(n: int) -> int:
        return n

    @app.post("/sync/{n}")
    def sync_route(n: int) -> dict[str, str]:  # runs in FastAPI's threadpool
        return {"id": record.enqueue_sync(n).id}

    from_thread: list[str] = []
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            from_thread.append(record.enqueue_sync(99).id)
        except BaseException as exc:  # report it to the test below
            errors.append(exc)

    with TestClient(app) as client:
        response = client.post("/sync/7")
        assert response.status_code == 200, response.text
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(10)
        assert not errors and len(from_thread) == 1
        job = client.portal.call(aw.get_job, response.json()["id"])  # type: ignore[union-attr]
        other = client.portal.call(aw.get_job, from_thread[0])  # type: ignore[union-attr]
    assert job is not None and job.args == [7] and job.status is JobStatus.QUEUED
    assert other is not None and other.args == [99]


@pytest.mark.anyio
async def test_enqueue_sync_on_the_loop_thread_says_to_await() -> None:
    aw = Afterwork("memory://")

    @aw.task
    def record(n: int) -> int:
        return n

    with pytest.raises(RuntimeError, match=r"await task\.enqueue"):
        record.enqueue_sync(1)
    with pytest.raises(RuntimeError, match=r"await task\.enqueue"):
        record.options(delay=1).enqueue_sync(1)
    assert await aw.list_jobs() == []
    # The sanctioned way from async code that must call sync code that enqueues:
    job = await asyncio.to_thread(record.enqueue_sync, 5)
    assert job.args == [5]
    await aw.aclose()

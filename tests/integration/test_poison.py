"""A job that kills its worker is failed after exactly ``max_recoveries`` deaths, and never
takes the jobs beside it down with it (issue "One job life, written once", item 3).

One poison job (SIGSEGV) and 11 healthy one-second jobs, one worker at concurrency 4,
restarted whenever it dies (as a process manager would): every healthy job succeeds, the
worker dies exactly 3 times, and the poison job ends ``failed`` saying why. On SQLite and on
Redis, with real processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from afterwork.backends import from_url
from afterwork.backends.base import NewJob, Store
from afterwork.job import TERMINAL_STATUSES, Job, JobStatus, new_job_id

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.poison_app:aw"


def with_store(url: str, use: Callable[[Store], Any]) -> Any:
    async def run() -> Any:
        store = from_url(url)
        await store.open()
        try:
            return await use(store)
        finally:
            await store.aclose()

    return asyncio.run(run())


def jobs(url: str, ids: list[str]) -> dict[str, Job]:
    async def get(store: Store) -> dict[str, Job]:
        found = {}
        for job_id in ids:
            job = await store.get(job_id)
            assert job is not None
            found[job_id] = job
        return found

    result: dict[str, Job] = with_store(url, get)
    return result


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/poison.db"
    base = request.getfixturevalue("redis_url")
    return f"{base}?prefix=afterwork:p{uuid.uuid4().hex[:10]}"


@pytest.mark.fleet
def test_a_poison_job_kills_its_worker_exactly_max_recoveries_times(
    store_url: str, tmp_path: Path
) -> None:
    poison = NewJob(id=new_job_id(), task="poison", max_attempts=1)
    healthy = [NewJob(id=new_job_id(), task="healthy", args=[n], max_attempts=1) for n in range(11)]
    with_store(store_url, lambda store: store.enqueue([poison, *healthy]))
    ids = [poison.id] + [job.id for job in healthy]
    env = {
        **os.environ,
        "AFTERWORK_URL": store_url,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }

    deaths = 0
    starts = 0
    deadline = time.monotonic() + 90
    while True:
        assert time.monotonic() < deadline, f"not done after 90 s ({deaths} deaths)"
        current = jobs(store_url, ids)
        if all(job.status in TERMINAL_STATUSES for job in current.values()):
            break
        with open(tmp_path / f"worker{starts}.err", "wb") as err:
            worker = subprocess.Popen(
                [sys.executable, "-m", "afterwork", "worker", APP, "--concurrency", "4"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        starts += 1
        try:
            # Until it dies, or until every job is over (then it is stopped gracefully).
            while worker.poll() is None:
                current = jobs(store_url, ids)
                if all(job.status in TERMINAL_STATUSES for job in current.values()):
                    worker.send_signal(signal.SIGTERM)
                    assert worker.wait(30) == 0
                    break
                assert time.monotonic() < deadline, f"not done after 90 s ({deaths} deaths)"
                time.sleep(0.05)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        if worker.returncode == -signal.SIGSEGV:
            deaths += 1
        else:
            assert worker.returncode == 0, (tmp_path / f"worker{starts - 1}.err").read_text()

    final = jobs(store_url, ids)
    assert deaths == 3
    assert [final[job.id].status for job in healthy] == [JobStatus.SUCCEEDED] * 11
    killer = final[poison.id]
    assert killer.status is JobStatus.FAILED
    assert killer.recoveries == 3
    assert killer.error is not None and killer.error.type == "afterwork.WorkerLost"
    assert "3 worker(s) died running this job (max_recoveries=3)" in killer.error.message
    # Bystanders are charged at most the one crash they shared before it was isolated.
    assert all(final[job.id].recoveries <= 1 for job in healthy)

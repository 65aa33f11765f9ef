"""docs/testing.md: every block of the page is one of these tests, verbatim, or the
example app and suite (examples/docs/testing_*), which runs in a pytest of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from afterwork import Afterwork, JobContext, JobStatus, Retry
from afterwork.testing import FakeClock

from .conftest import ROOT, assert_blocks_are_code

pytestmark = pytest.mark.anyio

SUITE = ROOT / "examples/docs/testing_suite"


def test_the_page_shows_these_tests() -> None:
    assert_blocks_are_code(
        "testing.md",
        Path(__file__),
        ROOT / "examples/docs/testing_app.py",
        SUITE / "conftest.py",
        SUITE / "test_signup.py",
    )


async def test_a_retry_waits_out_its_backoff() -> None:
    clock = FakeClock()
    aw = Afterwork("memory://", clock=clock)
    attempts: list[float] = []

    @aw.task(retries=1, backoff=Retry.fixed(60))
    async def flaky() -> None:
        attempts.append(clock())
        if len(attempts) == 1:
            raise ConnectionError("try again")

    async with aw:
        job = await flaky.enqueue()
        await aw.drain()  # the first attempt fails; the retry is due in 60 s
        clock.advance(59)
        assert await aw.drain() == 0  # not yet
        clock.advance(1)
        await aw.drain()  # the retry runs
        done = await job.refresh()
    assert done.status is JobStatus.SUCCEEDED
    assert attempts[1] - attempts[0] == 60


async def test_the_nightly_report_is_enqueued_at_two() -> None:
    clock = FakeClock(datetime(2026, 3, 1, 1, 0, tzinfo=UTC).timestamp())
    aw = Afterwork("memory://", clock=clock)

    @aw.cron("0 2 * * *")
    async def nightly_report() -> None: ...

    async with aw, aw.runtime(worker=False):
        await clock.wait_sleepers(1)  # the scheduler sleeps until the next tick
        await clock.pass_time(3 * 3600)  # three hours, in no time
        jobs = await aw.list_jobs()
    assert [job.scheduled_for.hour for job in jobs] == [2]


async def test_heartbeats_keep_a_long_job_leased() -> None:
    clock = FakeClock()
    aw = Afterwork("memory://", clock=clock, lease_ttl=30)
    started = anyio.Event()

    @aw.task
    async def export(ctx: JobContext) -> None:
        started.set()
        await ctx.wait_cancelled()

    async with aw:
        job = await export.enqueue()
        async with aw.worker():
            with anyio.fail_after(10):  # a bound in real seconds
                await started.wait()
            await clock.wait_sleepers(2)  # the worker's heartbeat and reaper loops
            await clock.pass_time(600)  # a heartbeat every 10 s renews the 30 s lease
            running = await job.refresh()
            assert running.status is JobStatus.RUNNING and running.recoveries == 0
            await aw.cancel(job.id)


def test_the_example_suite_passes() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", str(SUITE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout

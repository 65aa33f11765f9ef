"""Prefetch: jobs claimed ahead of free slots keep every guarantee of running ones."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from afterwork import Afterwork, JobStatus
from afterwork.backends.base import HeartbeatReply, Lease
from afterwork.testing import FakeClock

from ..waiting import eventually

pytestmark = pytest.mark.anyio

WAIT = 10


def make(**options: Any) -> tuple[Afterwork, asyncio.Event, list[int]]:
    aw = Afterwork("memory://", poll_interval=0.05, **options)
    gate = asyncio.Event()
    ran: list[int] = []

    @aw.task(name="work")
    async def work(n: int) -> None:
        ran.append(n)
        if n == 0:
            await gate.wait()

    return aw, gate, ran


async def _true(value: bool) -> bool:
    return value


async def running(aw: Afterwork, count: int) -> bool:
    jobs = await aw.list_jobs(status=JobStatus.RUNNING)
    return len(jobs) == count


async def test_prefetched_jobs_go_back_untouched_on_stop() -> None:
    aw, gate, ran = make(prefetch=2, grace=0.1)
    async with aw:
        task = aw.get_task("work")
        jobs = [await task.enqueue(n) for n in range(3)]
        async with aw.worker(concurrency=1), asyncio.timeout(WAIT):
            # Job 0 runs (and blocks); jobs 1 and 2 are claimed ahead and wait.
            await eventually(lambda: running(aw, 3))
            await eventually(lambda: _true(ran == [0]))
        for job in jobs:
            after = await aw.get_job(job.id)
            assert after is not None
            assert after.status is JobStatus.QUEUED, after
            assert after.attempts == 0 and after.worker is None
        assert ran == [0]  # nothing prefetched was started after the stop


async def test_a_prefetched_job_cancelled_never_runs() -> None:
    aw, gate, ran = make(prefetch=1)
    async with aw:
        task = aw.get_task("work")
        first = await task.enqueue(0)
        second = await task.enqueue(1)
        async with aw.worker(concurrency=1), asyncio.timeout(WAIT):
            await eventually(lambda: running(aw, 2))
            asked = await aw.cancel(second.id)
            assert asked is not None and asked.cancel_requested
            done = await second.wait(timeout=WAIT)
            assert done.status is JobStatus.CANCELLED
            gate.set()
            assert (await first.wait(timeout=WAIT)).status is JobStatus.SUCCEEDED
        assert ran == [0]


async def test_heartbeats_renew_prefetched_leases() -> None:
    clock = FakeClock()
    aw, gate, ran = make(prefetch=1, clock=clock, lease_ttl=10.0)  # a heartbeat every 10/3 s
    beats: list[set[str]] = []
    original = aw.backend.heartbeat

    async def counted(leases: Sequence[Lease], *, lease_ttl: float) -> HeartbeatReply:
        reply = await original(leases, lease_ttl=lease_ttl)
        beats.append({lease.job_id for lease in leases})
        return reply

    aw.backend.heartbeat = counted  # type: ignore[method-assign]
    async with aw:
        task = aw.get_task("work")
        await task.enqueue(0)
        waiting = await task.enqueue(1)
        async with aw.worker(concurrency=1), asyncio.timeout(WAIT):
            await eventually(lambda: running(aw, 2))
            await clock.wait_sleepers(2)  # the heartbeat and reaper loops
            await clock.pass_time(8)  # most of the lease: beats at 3.3 s and 6.7 s
            assert len(beats) == 2
            assert all(waiting.id in leases for leases in beats)  # the prefetched one too
            await clock.pass_time(8)  # past the original lease, within the renewed ones
            assert await aw.backend.recover_expired(max_recoveries=3) == []
            gate.set()
            done = await waiting.wait(timeout=WAIT)
        assert done.status is JobStatus.SUCCEEDED and done.recoveries == 0

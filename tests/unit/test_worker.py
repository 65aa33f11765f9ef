"""The worker's guarantees: timeouts, cancel, limits, graceful stop, logging."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from afterwork import Afterwork, JobContext, JobStatus, Retry
from afterwork.backends.base import Outcome
from afterwork.testing import FakeClock

from ..waiting import eventually

pytestmark = pytest.mark.anyio

WAIT = 10  # seconds: the bound on every wait below; none is reached when things work


@pytest.fixture
async def aw():
    instance = Afterwork("memory://", seed=7, lease_ttl=5.0, poll_interval=0.2, grace=5.0)
    async with instance:
        yield instance


async def test_async_job_timeout_cancels_and_counts_as_failed_attempt(aw: Afterwork) -> None:
    cancelled = asyncio.Event()

    @aw.task(timeout=0.2, retries=1, backoff=Retry.fixed(0))
    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job = await slow.enqueue()
    async with asyncio.timeout(WAIT):
        await aw.drain()
    done = await aw.get_job(job.id)
    assert done is not None
    assert done.status is JobStatus.FAILED
    assert done.attempts == 2
    assert done.error is not None and done.error.type == "TimeoutError"
    assert "0.2s timeout" in done.error.message
    assert cancelled.is_set()


async def test_sync_job_timeout_marks_failed_and_keeps_the_slot(aw: Afterwork) -> None:
    release = threading.Event()
    started = threading.Event()
    after: list[str] = []

    @aw.task(timeout=0.2)
    def stuck() -> None:
        started.set()
        release.wait(WAIT)

    @aw.task
    def next_job() -> None:
        after.append("ran")

    job = await stuck.enqueue()
    async with aw.worker(concurrency=1) as worker, asyncio.timeout(WAIT):
        done = await job.wait(timeout=WAIT)
        assert done.status is JobStatus.FAILED
        assert done.error is not None and done.error.type == "TimeoutError"
        # The thread still runs: its slot is held, so the next job waits for it.
        waiting = await next_job.enqueue()
        assert worker.statistics().running == 0
        assert after == []
        release.set()
        ran = await waiting.wait(timeout=WAIT)
    assert ran.status is JobStatus.SUCCEEDED
    assert after == ["ran"]


async def test_a_sync_thread_overrunning_its_timeout_is_logged_by_name(
    aw: Afterwork, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    @aw.task(timeout=0.2)
    def overruns() -> None:
        release.wait(WAIT)

    job = await overruns.enqueue()
    with caplog.at_level(logging.WARNING, logger="afterwork.worker"):
        async with aw.worker(concurrency=1), asyncio.timeout(WAIT):
            done = await job.wait(timeout=WAIT)
            assert done.status is JobStatus.FAILED

            def logged(action: str) -> list[logging.LogRecord]:
                return [r for r in caplog.records if getattr(r, "action", "") == action]

            async def overrun() -> list[logging.LogRecord] | None:
                return logged("job_thread_overrun") or None

            async def returned() -> list[logging.LogRecord] | None:
                return logged("job_thread_returned") or None

            (record,) = await eventually(overrun, timeout=WAIT)
            assert job.id in record.getMessage() and "overruns" in record.getMessage()
            assert "a thread cannot be stopped" in record.getMessage()
            assert not release.is_set()  # the thread was still running when it was logged
            release.set()
            (back,) = await eventually(returned, timeout=WAIT)
            assert job.id in back.getMessage()


async def test_cancel_running_async_job_promptly(aw: Afterwork) -> None:
    started = asyncio.Event()

    @aw.task
    async def forever(ctx: JobContext) -> None:
        started.set()
        await ctx.wait_cancelled()
        await asyncio.Event().wait()

    async with aw.worker(concurrency=2), asyncio.timeout(WAIT):
        job = await forever.enqueue()
        await started.wait()
        t0 = time.monotonic()
        asked = await aw.cancel(job.id)
        assert asked is not None and asked.cancel_requested
        done = await job.wait(timeout=WAIT)
        assert time.monotonic() - t0 < 1.0
    assert done.status is JobStatus.CANCELLED


async def test_sync_job_sees_cancellation_through_its_context(aw: Afterwork) -> None:
    started = threading.Event()
    noticed = threading.Event()

    @aw.task
    def polite(ctx: JobContext) -> None:
        started.set()
        while not ctx.cancelled:
            time.sleep(0.01)
        noticed.set()

    async with aw.worker(concurrency=2), asyncio.timeout(WAIT):
        job = await polite.enqueue()
        await asyncio.to_thread(started.wait, WAIT)
        await aw.cancel(job.id)
        done = await job.wait(timeout=WAIT)
    assert done.status is JobStatus.CANCELLED
    # The job is recorded cancelled at once; its thread notices between its steps.
    assert await asyncio.to_thread(noticed.wait, WAIT)


async def test_global_and_per_task_concurrency_limits(aw: Afterwork) -> None:
    running = {"limited": 0, "free": 0}
    peak = {"limited": 0, "free": 0, "total": 0}

    async def track(kind: str) -> None:
        running[kind] += 1
        peak[kind] = max(peak[kind], running[kind])
        peak["total"] = max(peak["total"], running["limited"] + running["free"])
        await asyncio.sleep(0.02)
        running[kind] -= 1

    @aw.task(local_concurrency=2)
    async def limited() -> None:
        await track("limited")

    @aw.task
    async def free() -> None:
        await track("free")

    for _ in range(12):
        await limited.enqueue()
        await free.enqueue()
    async with asyncio.timeout(WAIT):
        assert await aw.drain(concurrency=5) == 24
    assert peak["limited"] == 2
    assert peak["total"] <= 5  # the worker's concurrency, at every moment
    assert peak["free"] >= 3  # free jobs were not held back by the limited task


async def test_graceful_stop_lets_short_jobs_finish(aw: Afterwork) -> None:
    started = asyncio.Event()

    @aw.task
    async def short() -> str:
        started.set()
        await asyncio.sleep(0.1)
        return "done"

    async with asyncio.timeout(WAIT):
        async with aw.worker(concurrency=1):
            job = await short.enqueue()
            await started.wait()
        done = await aw.get_job(job.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED


async def test_graceful_stop_releases_overrunning_job_without_spending_an_attempt(
    aw: Afterwork,
) -> None:
    started = asyncio.Event()

    @aw.task(retries=0)
    async def long() -> None:
        started.set()
        await asyncio.Event().wait()

    queued_after: list[str] = []

    @aw.task
    async def later() -> None:
        queued_after.append("x")

    async with asyncio.timeout(WAIT):
        async with aw.worker(concurrency=1, grace=0.1):
            job = await long.enqueue()
            await started.wait()
            pending = await later.enqueue()
        released = await aw.get_job(job.id)
        untouched = await aw.get_job(pending.id)
    assert released is not None
    assert released.status is JobStatus.QUEUED
    assert released.attempts == 0
    assert released.worker is None
    assert untouched is not None and untouched.status is JobStatus.QUEUED
    assert queued_after == []  # nothing was claimed after stop


async def test_stop_now_releases_at_once(aw: Afterwork) -> None:
    started = asyncio.Event()

    @aw.task
    async def long() -> None:
        started.set()
        await asyncio.Event().wait()

    async with asyncio.timeout(WAIT):
        async with aw.worker(concurrency=1, grace=3600) as worker:
            job = await long.enqueue()
            await started.wait()
            worker.stop(now=True)
        released = await aw.get_job(job.id)
    assert released is not None and released.status is JobStatus.QUEUED


async def test_failed_job_is_logged_once_with_traceback(
    aw: Afterwork, caplog: pytest.LogCaptureFixture
) -> None:
    @aw.task(retries=2, backoff=Retry.fixed(0))
    async def broken() -> None:
        raise KeyError("missing")

    caplog.set_level(logging.INFO, logger="afterwork")
    job = await broken.enqueue()
    await aw.drain()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    record = errors[0]
    assert job.id in record.getMessage() and broken.name in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert getattr(record, "action", None) == "job_failed"
    assert getattr(record, "job", {})["id"] == job.id
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per retried attempt


async def test_unserializable_or_huge_result_fails_cleanly(aw: Afterwork) -> None:
    small = Afterwork("memory://", max_result=100)

    @small.task
    async def odd() -> object:
        return object()

    @small.task
    async def big() -> str:
        return "x" * 1000

    a = await odd.enqueue()
    b = await big.enqueue()
    await small.drain()
    for job_id, kind in (
        (a.id, "afterwork.ResultNotSerializable"),
        (b.id, "afterwork.ResultTooLarge"),
    ):
        job = await small.get_job(job_id)
        assert job is not None and job.status is JobStatus.FAILED
        assert job.error is not None and job.error.type == kind
    await small.aclose()


async def test_worker_survives_a_failing_store_call() -> None:
    clock = FakeClock()
    aw = Afterwork("memory://", clock=clock, seed=7, lease_ttl=5.0, poll_interval=0.2, grace=5.0)
    calls = {"n": 0}
    original = aw.backend.claim

    async def flaky_claim(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("store down")
        return await original(*args, **kwargs)

    aw.backend.claim = flaky_claim  # type: ignore[method-assign]

    @aw.task
    async def fine() -> int:
        return 1

    async with aw:
        job = await fine.enqueue()
        async with aw.worker(concurrency=1), asyncio.timeout(WAIT):
            await clock.wait_sleepers(3)  # heartbeat, reaper and the claim loop's backoff
            assert calls["n"] == 1
            # The backoff after a first failure is 0.1–0.2 s, on the clock: no retry before.
            await clock.pass_time(0.099)
            assert calls["n"] == 1
            await clock.pass_time(0.101)
            assert calls["n"] == 2
            await clock.pass_time(0.4)  # the second backoff (0.2–0.4 s), then a claim works
            done = await job.wait(timeout=WAIT)
    assert done.status is JobStatus.SUCCEEDED
    assert calls["n"] >= 3


async def test_expired_lease_is_recovered_by_a_live_worker() -> None:
    clock = FakeClock()
    aw = Afterwork("memory://", clock=clock, lease_ttl=30.0, reaper_interval=5.0)
    async with aw:

        @aw.task(retries=1)
        async def quick() -> str:
            return "again"

        job = await quick.enqueue()
        # A "dead" worker claims it and never heartbeats.
        (claim,) = await aw.backend.claim("dead", queues=None, limit=1, lease_ttl=30.0)
        await aw.backend.begin([claim.lease])  # it had started running the job
        async with aw.worker(concurrency=1) as worker, asyncio.timeout(WAIT):
            await clock.wait_sleepers(2)  # the heartbeat and reaper loops
            await clock.pass_time(29)  # five reaper passes, all within the lease
            held = await aw.get_job(job.id)
            assert held is not None and held.status is JobStatus.RUNNING
            assert held.recoveries == 0 and worker.statistics().recovered == 0
            await clock.pass_time(6)  # expired at 30 s; the next pass recovers it
            assert worker.statistics().recovered == 1
            done = await job.wait(timeout=WAIT)
        assert done.status is JobStatus.SUCCEEDED
        assert done.recoveries == 1
        assert await aw.backend.finish(claim.lease, Outcome.succeeded("zombie")) is None


async def test_heartbeats_hold_the_lease_of_a_long_job() -> None:
    clock = FakeClock()
    aw = Afterwork("memory://", clock=clock, lease_ttl=30.0, reaper_interval=5.0)
    started = asyncio.Event()
    release = asyncio.Event()
    async with aw:

        @aw.task
        async def long() -> str:
            started.set()
            await release.wait()
            return "done"

        job = await long.enqueue()
        async with aw.worker(concurrency=1) as worker, asyncio.timeout(WAIT):
            await started.wait()
            await clock.wait_sleepers(2)  # the heartbeat and reaper loops
            await clock.pass_time(300)  # ten lease lifetimes: renewed every 10 s
            running = await aw.get_job(job.id)
            assert running is not None and running.status is JobStatus.RUNNING
            assert running.worker == worker.id and running.recoveries == 0
            stats = worker.statistics()
            assert (stats.lost_leases, stats.recovered) == (0, 0)
            release.set()
            done = await job.wait(timeout=WAIT)
    assert done.status is JobStatus.SUCCEEDED and done.recoveries == 0


@pytest.mark.timeout(20)  # the bug this guards against spins the loop: no await can time out
async def test_worker_does_not_spin_when_only_limited_work_is_waiting() -> None:
    clock = FakeClock()
    aw = Afterwork("memory://", clock=clock, seed=7, lease_ttl=5.0, poll_interval=0.2, grace=5.0)
    release = asyncio.Event()
    started = asyncio.Event()

    @aw.task(local_concurrency=1)
    async def single() -> None:
        started.set()
        await release.wait()

    calls = {"n": 0}
    original = aw.backend.claim

    async def counting_claim(*args, **kwargs):
        calls["n"] += 1
        return await original(*args, **kwargs)

    aw.backend.claim = counting_claim  # type: ignore[method-assign]
    async with aw:
        first = await single.enqueue()
        second = await single.enqueue()  # waits: the task's limit is 1
        async with aw.worker(concurrency=4), asyncio.timeout(WAIT):
            await started.wait()
            await clock.wait_sleepers(3)  # heartbeat, reaper, and the claim loop's poll
            before = calls["n"]
            # While the second job waits for the first, the worker must not hammer the
            # store: with poll_interval 0.2 s, 5 claims a second of the clock's time (the
            # fifth may land a rounding error past the second).
            await clock.pass_time(1.0)
            assert 4 <= calls["n"] - before <= 6, calls["n"] - before
            release.set()
            done = await second.wait(timeout=WAIT)
        assert done.status is JobStatus.SUCCEEDED
        first_done = await aw.get_job(first.id)
        assert first_done is not None and first_done.status is JobStatus.SUCCEEDED


async def test_a_job_recovered_from_a_dead_worker_runs_alone() -> None:
    """It may have killed that worker: nothing starts beside it, so a second crash charges
    no bystander."""
    from afterwork.testing import FakeClock

    clock = FakeClock()
    aw = Afterwork("memory://", clock=clock, lease_ttl=5.0, poll_interval=0.05)
    beside: dict[str, set[str]] = {}
    running: set[str] = set()
    order: list[str] = []

    @aw.task(name="step", retries=1)
    async def step(name: str) -> None:
        order.append(name)
        running.add(name)
        beside[name] = set(running)
        for _ in range(20):  # hold the slot for a few loop turns
            await asyncio.sleep(0)
        beside[name] |= running
        running.discard(name)

    async with aw:
        suspect = await step.enqueue("suspect")
        (claim,) = await aw.backend.claim("dead", queues=None, limit=1, lease_ttl=5.0)
        await aw.backend.begin([claim.lease])
        # Two jobs due before it (they start first), two after it (they wait for it).
        others = [await step.enqueue(f"other{n}") for n in range(2)]
        clock.advance(6)
        (recovered,) = await aw.backend.recover_expired(max_recoveries=3)
        assert recovered.recoveries == 1
        clock.advance(1)
        others += [await step.enqueue(f"other{n}") for n in range(2, 4)]
        async with aw.worker(concurrency=4), asyncio.timeout(WAIT):
            for job in [suspect, *others]:
                assert (await job.wait(timeout=WAIT)).status is JobStatus.SUCCEEDED
    assert beside["suspect"] == {"suspect"}
    assert all("suspect" not in beside[f"other{n}"] for n in range(4))
    # It waits for the jobs due before it, and nothing due after it overtakes it.
    assert order.index("suspect") == 2


class _Escapes(BaseException):
    """Not an ``Exception``: no handler of the worker catches it."""


async def test_an_error_escaping_a_jobs_task_stops_the_worker_and_its_jobs(
    aw: Afterwork,
) -> None:
    # Jobs run in plain asyncio tasks the worker joins itself: what escapes one ends the
    # worker as an error in its task group would, and the jobs beside it are cancelled.
    beside_cancelled = asyncio.Event()
    beside_started = asyncio.Event()

    @aw.task
    async def beside() -> None:
        beside_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            beside_cancelled.set()
            raise

    @aw.task
    async def escapes() -> None:
        await beside_started.wait()
        raise _Escapes("out of the job")

    await beside.enqueue()
    await escapes.enqueue()
    with pytest.raises(BaseExceptionGroup) as crashed:
        async with asyncio.timeout(WAIT):
            await aw.drain(concurrency=2)
    assert crashed.group_contains(_Escapes, match="out of the job")
    assert beside_cancelled.is_set()


async def test_a_shielded_cleanup_in_a_job_ends_when_the_worker_is_cancelled(
    aw: Afterwork,
) -> None:
    # The jobs' plain asyncio tasks are cancelled through anyio, as the task group did:
    # a shielded cleanup runs to its end, and the worker's cancellation still propagates.
    import anyio.lowlevel

    started = asyncio.Event()
    cleanup: list[str] = []

    @aw.task
    async def endless() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            with anyio.CancelScope(shield=True):
                # A teardown that takes a while (a cancel delivered meanwhile must not
                # land in it), then one that yields often.
                await anyio.sleep(0.25)
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                cleanup.append("done")

    with pytest.raises(ExceptionGroup) as crashed:
        async with aw.worker():
            await endless.enqueue()
            async with asyncio.timeout(WAIT):
                await started.wait()
            raise RuntimeError("the app crashed")
    assert crashed.group_contains(RuntimeError, match="the app crashed")
    assert cleanup == ["done"]

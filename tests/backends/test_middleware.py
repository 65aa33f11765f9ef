"""Middleware around every enqueue and every attempt, on every store."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import pytest

from afterwork import Afterwork, Job, JobCall, JobStatus, Retry

from .conftest import AwFactory

pytestmark = pytest.mark.anyio

Next = Callable[[], Awaitable[Job | None]]


async def test_middleware_wraps_enqueue_and_attempt_in_order(make_aw: AwFactory) -> None:
    seen: list[str] = []
    loop_thread = threading.get_ident()
    threads: list[bool] = []

    async def outer(call: JobCall, call_next: Next) -> Job | None:
        seen.append(f"outer>{call.kind}:{call.attempt}")
        job = await call_next()
        seen.append(f"outer<{call.kind}:{job.status.value if job else None}")
        return job

    def inner(call: JobCall, call_next: Callable[[], Job | None]) -> Job | None:
        threads.append(threading.get_ident() != loop_thread)
        seen.append(f"inner>{call.kind}")
        job = call_next()
        seen.append(f"inner<{call.kind}:{job.status.value if job else None}")
        return job

    aw = make_aw(middleware=[outer])
    assert aw.middleware(inner) is inner
    async with aw:

        @aw.task
        async def add(a: int, b: int) -> int:
            seen.append("run")
            return a + b

        job = await add.enqueue(1, 2)
        assert seen == [
            "outer>enqueue:0",
            "inner>enqueue",
            "inner<enqueue:queued",
            "outer<enqueue:queued",
        ]
        seen.clear()
        assert await aw.drain() == 1
        assert seen == [
            "outer>attempt:1",
            "inner>attempt",
            "run",
            "inner<attempt:succeeded",
            "outer<attempt:succeeded",
        ]
        assert threads == [True, True]  # a sync middleware never runs on the loop
        done = await aw.get_job(job.id)
        assert done is not None and done.result == 3


async def test_attempt_call_describes_the_claimed_job(make_aw: AwFactory) -> None:
    calls: list[JobCall] = []
    outcomes: list[JobStatus | None] = []

    async def spy(call: JobCall, call_next: Next) -> Job | None:
        job = await call_next()
        if call.kind == "attempt":
            calls.append(call)
            outcomes.append(job.status if job else None)
        return job

    aw = make_aw(middleware=[spy])
    async with aw:

        @aw.task(retries=1, backoff=Retry.fixed(0.0))
        async def flaky() -> None:
            raise RuntimeError("boom")

        job = await flaky.options(queue="q").enqueue()
        await aw.drain()
    assert outcomes == [JobStatus.SCHEDULED, JobStatus.FAILED]
    assert [c.attempt for c in calls] == [1, 2]
    for call in calls:
        assert call.job is not None and call.job.status is JobStatus.RUNNING
        assert (call.task, call.queue, call.job_id) == (flaky.name, "q", job.id)
        assert call.worker is not None and call.worker == call.job.worker
        assert call.new_job is None


async def test_a_middleware_failing_before_the_attempt_fails_it(make_aw: AwFactory) -> None:
    ran: list[int] = []

    async def refuse(call: JobCall, call_next: Next) -> Job | None:
        if call.kind == "attempt":
            raise PermissionError("not today")
        return await call_next()

    aw = make_aw(middleware=[refuse])
    async with aw:

        @aw.task
        async def work() -> None:
            ran.append(1)

        job = await work.enqueue()
        await aw.drain()
        done = await aw.get_job(job.id)
    assert ran == []
    assert done is not None and done.status is JobStatus.FAILED
    assert done.error is not None and done.error.type == "PermissionError"
    assert done.error.message == "not today"


async def test_a_middleware_failing_after_the_attempt_keeps_its_outcome(
    make_aw: AwFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_after(call: JobCall, call_next: Callable[[], Job | None]) -> Job | None:
        job = call_next()
        if call.kind == "attempt":
            raise ValueError("metrics exporter down")
        return job

    aw = make_aw(middleware=[broken_after])
    async with aw:

        @aw.task
        async def work() -> int:
            return 7

        job = await work.enqueue()
        with caplog.at_level("WARNING", logger="afterwork.runner"):
            await aw.drain()
        done = await aw.get_job(job.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == 7
    failures = [r for r in caplog.records if getattr(r, "action", None) == "middleware_failed"]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is ValueError


async def test_a_middleware_that_skips_call_next_fails_the_attempt(make_aw: AwFactory) -> None:
    async def skip(call: JobCall, call_next: Next) -> Job | None:
        if call.kind == "attempt":
            return None
        return await call_next()

    aw = make_aw(middleware=[skip])
    async with aw:

        @aw.task
        async def work() -> None: ...

        job = await work.enqueue()
        await aw.drain()
        done = await aw.get_job(job.id)
    assert done is not None and done.status is JobStatus.FAILED
    assert done.error is not None and done.error.type == "afterwork.NotRun"


async def test_an_enqueue_middleware_error_reaches_the_caller_and_stores_nothing(
    aw: Afterwork,
) -> None:
    @aw.middleware
    async def deny(call: JobCall, call_next: Next) -> Job | None:
        assert call.new_job is not None and call.job is None and call.worker is None
        raise PermissionError(f"no {call.task}")

    @aw.task
    async def work() -> None: ...

    with pytest.raises(PermissionError, match="no "):
        await work.enqueue()
    assert await aw.list_jobs() == []


async def test_a_batch_enqueue_passes_each_job_through_the_chain(aw: Afterwork) -> None:
    ids: list[str] = []

    @aw.middleware
    async def spy(call: JobCall, call_next: Next) -> Job | None:
        assert call.new_job is not None
        job = await call_next()
        assert job is not None and job.id == call.job_id == call.new_job.id
        ids.append(job.id)
        return job

    @aw.task
    async def work(n: int) -> None: ...

    news = [aw.build_job(work, (n,), {}, {}) for n in range(3)]
    stored = await aw.enqueue_many(news)
    assert ids == [n.id for n in news] == [j.id for j in stored]
    assert {j.status for j in stored} == {JobStatus.QUEUED}


async def test_middleware_must_be_callable(aw: Afterwork) -> None:
    with pytest.raises(TypeError, match="callable"):
        aw.middleware("sentry")  # type: ignore[type-var]

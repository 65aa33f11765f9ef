"""One suite, every backend: the guarantees of DESIGN.md (Semantics), line by line.

Time comes from a FakeClock; workers run in burst mode (``aw.drain()``), so nothing here
sleeps to wait for time.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import timedelta
from typing import Any

import pytest

from afterwork import Afterwork, EnqueueError, Job, JobCall, JobContext, JobStatus, Retry
from afterwork.backends.base import DueCount, JobFilter, Lease, NewJob, Outcome
from afterwork.job import (
    MAX_HEADERS,
    MAX_HEADERS_BYTES,
    SCHEDULE_HEADER,
    TERMINAL_STATUSES,
    TRANSITIONS,
    JobError,
    JobEvent,
    new_job_id,
)
from afterwork.testing import FakeClock

from .conftest import AwFactory

pytestmark = pytest.mark.anyio


def new(task: str = "t", **fields: Any) -> NewJob:
    return NewJob(id=new_job_id(), task=task, **fields)


async def test_enqueue_then_drain_succeeds_with_result(aw: Afterwork) -> None:
    @aw.task
    async def add(a: int, b: int) -> int:
        return a + b

    job = await add.enqueue(2, 3)
    assert job.status is JobStatus.QUEUED
    assert (await aw.get_job(job.id)) == job
    assert await aw.drain() == 1
    done = await aw.get_job(job.id)
    assert done is not None
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == 5
    assert done.attempts == 1
    assert done.started_at is not None and done.finished_at is not None
    assert done.worker is None and done.lease_expires_at is None


async def test_get_unknown_job_is_none(aw: Afterwork) -> None:
    assert await aw.get_job(new_job_id()) is None
    assert await aw.cancel(new_job_id()) is None


async def test_delayed_job_waits_for_its_time(aw: Afterwork, clock: FakeClock) -> None:
    ran: list[str] = []

    @aw.task
    def tick(name: str) -> None:
        ran.append(name)

    job = await tick.options(delay=30).enqueue("later")
    assert job.status is JobStatus.SCHEDULED
    assert job.run_at == pytest.approx(clock() + 30)
    assert await aw.drain() == 0
    clock.advance(29.9)
    assert await aw.drain() == 0
    clock.advance(0.2)
    assert await aw.drain() == 1
    assert ran == ["later"]


async def test_priority_then_age_order(aw: Afterwork, clock: FakeClock) -> None:
    order: list[str] = []

    @aw.task
    async def record(name: str) -> None:
        order.append(name)

    await record.enqueue("low-1")
    clock.advance(1)
    await record.options(priority=5).enqueue("high-1")
    clock.advance(1)
    await record.enqueue("low-2")
    clock.advance(1)
    await record.options(priority=5).enqueue("high-2")
    await aw.drain(concurrency=1)
    assert order == ["high-1", "high-2", "low-1", "low-2"]


async def test_workers_claim_only_their_queues(aw: Afterwork) -> None:
    ran: list[str] = []

    @aw.task(queue="media")
    async def media(x: int) -> None:
        ran.append(f"media{x}")

    @aw.task
    async def plain(x: int) -> None:
        ran.append(f"plain{x}")

    await media.enqueue(1)
    await plain.enqueue(1)
    await plain.options(queue="media").enqueue(2)
    assert await aw.drain(queues=["media"]) == 2
    assert sorted(ran) == ["media1", "plain2"]
    assert await aw.drain(queues=["default"]) == 1


async def test_key_dedupes_among_unfinished_jobs(aw: Afterwork) -> None:
    @aw.task
    async def once(x: int) -> int:
        return x

    first = await once.options(key="k1").enqueue(1)
    again = await once.options(key="k1").enqueue(2)
    assert again.id == first.id
    assert again.args == [1]
    other = await once.options(key="k2").enqueue(3)
    assert other.id != first.id
    await aw.drain()
    # Finished: the key is free again.
    fresh = await once.options(key="k1").enqueue(4)
    assert fresh.id != first.id
    assert fresh.status is JobStatus.QUEUED


async def test_key_dedupes_within_one_batch(aw: Afterwork) -> None:
    jobs = await aw.backend.enqueue([new(key="same"), new(key="same")])
    assert jobs[0].id == jobs[1].id


async def test_cancel_waiting_job_at_once(aw: Afterwork) -> None:
    ran: list[int] = []

    @aw.task
    async def work(x: int) -> None:
        ran.append(x)

    queued = await work.enqueue(1)
    delayed = await work.options(delay=5).enqueue(2)
    for job in (queued, delayed):
        cancelled = await aw.cancel(job.id)
        assert cancelled is not None and cancelled.status is JobStatus.CANCELLED
        assert cancelled.finished_at is not None
    assert await aw.drain() == 0
    assert ran == []
    # Cancelling a finished job changes nothing.
    again = await aw.cancel(queued.id)
    assert again is not None and again.status is JobStatus.CANCELLED


async def test_retries_with_exponential_backoff_then_failed(
    aw: Afterwork, clock: FakeClock
) -> None:
    attempts: list[int] = []

    @aw.task(retries=3, backoff=Retry.exponential(base=2.0, cap=5.0, jitter=False))
    async def flaky(ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError(f"boom {ctx.attempt}")

    job = await flaky.enqueue()
    for expected_delay in (2.0, 4.0, 5.0):  # 2*2**0, 2*2**1, capped at 5
        await aw.drain()
        current = await aw.get_job(job.id)
        assert current is not None
        assert current.status is JobStatus.SCHEDULED
        assert current.run_at == pytest.approx(clock() + expected_delay)
        assert current.error is not None and current.error.type == "RuntimeError"
        clock.advance(expected_delay - 0.01)
        assert await aw.drain() == 0  # not due yet
        clock.advance(0.01)
    await aw.drain()
    final = await aw.get_job(job.id)
    assert final is not None
    assert final.status is JobStatus.FAILED
    assert attempts == [1, 2, 3, 4]
    assert final.attempts == 4
    assert final.error is not None
    assert final.error.message == "boom 4"
    assert "RuntimeError: boom 4" in final.error.traceback
    assert "Traceback" in final.error.traceback


async def test_full_jitter_stays_within_bounds(aw: Afterwork, clock: FakeClock) -> None:
    @aw.task(retries=1, backoff=Retry.exponential(base=8.0, cap=100.0))
    async def fails() -> None:
        raise ValueError("x")

    jobs = [await fails.enqueue() for _ in range(20)]
    await aw.drain()
    delays = []
    for job in jobs:
        current = await aw.get_job(job.id)
        assert current is not None and current.status is JobStatus.SCHEDULED
        delays.append(current.run_at - clock())
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 10  # jittered, not in lockstep


async def test_retry_later_from_job(aw: Afterwork, clock: FakeClock) -> None:
    @aw.task(retries=1)
    async def polite(ctx: JobContext) -> str:
        if ctx.attempt == 1:
            raise Retry.later(42)
        return "ok"

    job = await polite.enqueue()
    await aw.drain()
    current = await aw.get_job(job.id)
    assert current is not None and current.status is JobStatus.SCHEDULED
    assert current.run_at == pytest.approx(clock() + 42)
    clock.advance(42)
    await aw.drain()
    done = await aw.get_job(job.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == "ok"


async def test_dont_retry_fails_at_once(aw: Afterwork) -> None:
    @aw.task(retries=5, dont_retry=(ValueError,))
    async def strict() -> None:
        raise ValueError("bad input")

    job = await strict.enqueue()
    await aw.drain()
    done = await aw.get_job(job.id)
    assert done is not None
    assert done.status is JobStatus.FAILED
    assert done.attempts == 1
    assert done.error is not None and done.error.type == "ValueError"


async def test_unknown_task_fails_and_worker_carries_on(aw: Afterwork) -> None:
    @aw.task
    async def fine() -> str:
        return "fine"

    (orphan,) = await aw.backend.enqueue([new(task="nobody:registered")])
    good = await fine.enqueue()
    await aw.drain()
    failed = await aw.get_job(orphan.id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error.type == "afterwork.TaskNotFound"
    assert "nobody:registered" in failed.error.message
    ok = await aw.get_job(good.id)
    assert ok is not None and ok.status is JobStatus.SUCCEEDED


async def test_undecodable_arguments_fail_cleanly(aw: Afterwork) -> None:
    @aw.task(retries=3)
    async def typed(n: int) -> int:
        return n

    (bad,) = await aw.backend.enqueue([new(task=typed.name, args=["not a number"], max_attempts=4)])
    (extra,) = await aw.backend.enqueue([new(task=typed.name, args=[1, 2, 3])])
    await aw.drain()
    for job_id in (bad.id, extra.id):
        job = await aw.get_job(job_id)
        assert job is not None and job.status is JobStatus.FAILED
        assert job.error is not None and job.error.type == "afterwork.BadArguments"
        assert job.attempts == 1  # bad data is not retried


async def test_lease_fencing_and_recovery(aw: Afterwork, clock: FakeClock) -> None:
    backend = aw.backend
    await backend.enqueue([new(max_attempts=2)])
    (claim,) = await backend.claim("w1", queues=None, limit=5, lease_ttl=10.0)
    assert claim.job.status is JobStatus.RUNNING and claim.job.worker == "w1"
    assert claim.job.attempts == 0 and claim.job.started_at is None  # claimed, not started
    (begun,) = await backend.begin([claim.lease])
    assert begun is not None and begun.attempts == 1 and begun.started_at is not None
    # While the lease holds, nobody else can claim the job, and recovery leaves it alone.
    assert await backend.claim("w2", queues=None, limit=5, lease_ttl=10.0) == []
    clock.advance(9)
    assert await backend.recover_expired(max_recoveries=3) == []
    reply = await backend.heartbeat([claim.lease], lease_ttl=10.0)
    assert reply.lost == frozenset()
    clock.advance(9)  # renewed at t+9: still valid at t+18
    assert await backend.recover_expired(max_recoveries=3) == []
    clock.advance(2)  # t+20 > t+19: expired
    (recovered,) = await backend.recover_expired(max_recoveries=3)
    assert recovered.status is JobStatus.QUEUED
    assert recovered.recoveries == 1
    assert recovered.error is not None and recovered.error.type == "afterwork.WorkerLost"
    (second,) = await backend.claim("w2", queues=None, limit=5, lease_ttl=10.0)
    assert second.token != claim.token
    assert second.job.attempts == 1
    assert await backend.begin([claim.lease]) == [None]  # the stale worker cannot start it
    (begun,) = await backend.begin([second.lease])
    assert begun is not None and begun.attempts == 2
    # The stale worker can neither renew nor write an outcome.
    stale = await backend.heartbeat([claim.lease], lease_ttl=10.0)
    assert stale.lost == frozenset({claim.job.id})
    assert await backend.finish(claim.lease, Outcome.succeeded("stale")) is None
    assert not await backend.set_progress(claim.lease, 0.5, "stale")
    done = await backend.finish(second.lease, Outcome.succeeded("fresh"))
    assert done is not None and done.result == "fresh"
    assert await backend.finish(second.lease, Outcome.succeeded("twice")) is None


async def test_due_or_running_counts_at_one_instant(aw: Afterwork, clock: FakeClock) -> None:
    """What ``aw.join()`` waits for: queued, running, scheduled with its time come."""
    backend = aw.backend
    assert isinstance(backend, DueCount)

    async def brute() -> int:
        now = backend.now()
        return sum(
            1
            for job in await backend.list_jobs(JobFilter(limit=100))
            if job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
            or (job.status is JobStatus.SCHEDULED and job.run_at <= now)
        )

    assert await backend.due_or_running() == 0
    await backend.enqueue([new(max_attempts=2), new(delay=5), new(delay=60)])
    assert await backend.due_or_running() == await brute() == 1
    clock.advance(5)
    assert await backend.due_or_running() == await brute() == 2
    claims = await backend.claim("w1", queues=None, limit=5, lease_ttl=30.0)
    assert len(claims) == 2  # the due scheduled job is promoted and claimed too
    assert await backend.due_or_running() == await brute() == 2
    first, second = (claim.lease for claim in claims)
    await backend.begin([first, second])
    retried = Outcome.retry(JobError(type="E", message="again"), delay=10)
    assert await backend.finish(first, retried) is not None
    assert await backend.due_or_running() == await brute() == 1  # the retry is not due yet
    assert await backend.finish(second, Outcome.succeeded(1)) is not None
    assert await backend.due_or_running() == await brute() == 0
    clock.advance(10)
    assert await backend.due_or_running() == await brute() == 1
    clock.advance(60)
    assert await backend.due_or_running() == await brute() == 2


async def test_recovery_gives_up_after_max_recoveries(aw: Afterwork, clock: FakeClock) -> None:
    """A job whose worker dies while running it is failed after exactly max_recoveries deaths."""
    backend = aw.backend
    (job,) = await backend.enqueue([new(max_attempts=1)])
    for round_ in range(3):
        (claim,) = await backend.claim("w", queues=None, limit=1, lease_ttl=1.0)
        await backend.begin([claim.lease])
        clock.advance(2)
        (recovered,) = await backend.recover_expired(max_recoveries=3)
        assert recovered.recoveries == round_ + 1
        if round_ < 2:
            assert recovered.status is JobStatus.QUEUED
        else:
            assert recovered.status is JobStatus.FAILED
            assert recovered.error is not None and recovered.error.type == "afterwork.WorkerLost"
            assert "3 worker(s) died" in recovered.error.message
    final = await backend.get(job.id)
    assert final is not None and final.status is JobStatus.FAILED and final.recoveries == 3
    assert final.attempts == 3


async def test_unstarted_claims_go_back_uncharged_and_first(
    aw: Afterwork, clock: FakeClock
) -> None:
    """Jobs a dead worker had only prefetched are not charged and keep their place."""
    backend = aw.backend
    (first,) = await backend.enqueue([new()])
    clock.advance(1)
    (claim,) = await backend.claim("w", queues=None, limit=5, lease_ttl=1.0)
    (newer,) = await backend.enqueue([new()])
    clock.advance(2)
    (back,) = await backend.recover_expired(max_recoveries=1)
    assert back.id == first.id and back.status is JobStatus.QUEUED
    assert back.recoveries == 0 and back.attempts == 0 and back.error is None
    assert await backend.begin([claim.lease]) == [None]
    (again,) = await backend.claim("w2", queues=None, limit=1, lease_ttl=10.0)
    assert again.job.id == first.id  # ahead of the newer job
    assert newer.id != first.id


async def test_inline_job_is_failed_not_requeued_when_its_process_dies(
    aw: Afterwork, clock: FakeClock
) -> None:
    claim = await aw.backend.start(new(max_attempts=0), "web", lease_ttl=1.0)
    assert claim.job.status is JobStatus.RUNNING and claim.job.attempts == 1
    clock.advance(2)
    (recovered,) = await aw.backend.recover_expired(max_recoveries=3)
    assert recovered.status is JobStatus.FAILED


async def test_release_does_not_spend_an_attempt(aw: Afterwork) -> None:
    backend = aw.backend
    (job,) = await backend.enqueue([new()])
    (claim,) = await backend.claim("w", queues=None, limit=1, lease_ttl=10.0)
    (begun,) = await backend.begin([claim.lease])
    assert begun is not None and begun.attempts == 1
    released = await backend.finish(claim.lease, Outcome.released())
    assert released is not None
    assert released.status is JobStatus.QUEUED and released.attempts == 0
    (again,) = await backend.claim("w", queues=None, limit=1, lease_ttl=10.0)
    assert again.job.id == job.id and again.job.attempts == 0
    # A claim released before it started gives back nothing: it spent nothing.
    unstarted = await backend.finish(again.lease, Outcome.released())
    assert unstarted is not None and unstarted.attempts == 0


async def test_claims_never_hand_out_a_job_twice(aw: Afterwork) -> None:
    backend = aw.backend
    await backend.enqueue([new() for _ in range(50)])
    batches = await asyncio.gather(
        *(backend.claim(f"w{i}", queues=None, limit=7, lease_ttl=10.0) for i in range(10))
    )
    ids = [claim.job.id for batch in batches for claim in batch]
    assert len(ids) == 50
    assert len(set(ids)) == 50


async def test_claim_skips_excluded_tasks(aw: Afterwork) -> None:
    backend = aw.backend
    await backend.enqueue([new(task="busy"), new(task="free")])
    (claim,) = await backend.claim(
        "w", queues=None, limit=5, lease_ttl=10.0, exclude_tasks={"busy"}
    )
    assert claim.job.task == "free"
    (later,) = await backend.claim("w", queues=None, limit=5, lease_ttl=10.0)
    assert later.job.task == "busy"


async def test_cancel_running_job_is_seen_by_heartbeat(aw: Afterwork) -> None:
    backend = aw.backend
    (job,) = await backend.enqueue([new()])
    (claim,) = await backend.claim("w", queues=None, limit=1, lease_ttl=10.0)
    asked = await backend.cancel(job.id)
    assert asked is not None and asked.status is JobStatus.RUNNING and asked.cancel_requested
    reply = await backend.heartbeat([claim.lease], lease_ttl=10.0)
    assert reply.cancel == frozenset({job.id})
    done = await backend.finish(claim.lease, Outcome.cancelled())
    assert done is not None and done.status is JobStatus.CANCELLED


async def test_progress_is_recorded(aw: Afterwork) -> None:
    @aw.task
    def steps(ctx: JobContext) -> None:
        ctx.progress(0.25, "a quarter")
        ctx.progress(0.75, "three quarters")

    job = await steps.enqueue()
    await aw.drain()
    done = await aw.get_job(job.id)
    assert done is not None
    assert done.progress == 0.75
    assert done.progress_message == "three quarters"


async def test_result_ttl_purges_finished_jobs(aw: Afterwork, clock: FakeClock) -> None:
    @aw.task(result_ttl=60)
    async def short() -> int:
        return 1

    @aw.task(result_ttl=None)
    async def forever() -> int:
        return 2

    a = await short.enqueue()
    b = await forever.enqueue()
    waiting = await short.options(delay=1000).enqueue()
    await aw.drain()
    clock.advance(59)
    assert await aw.purge() == 0
    clock.advance(2)
    assert await aw.purge() == 1
    assert await aw.get_job(a.id) is None
    assert await aw.get_job(b.id) is not None
    assert await aw.get_job(waiting.id) is not None
    clock.advance(10_000)
    assert await aw.purge(older_than=5) == 1  # b; the waiting job is not finished
    assert await aw.get_job(b.id) is None


async def test_manual_retry_of_failed_and_cancelled(aw: Afterwork) -> None:
    calls: list[int] = []

    @aw.task
    async def once_bad(ctx: JobContext) -> str:
        calls.append(ctx.attempt)
        if len(calls) == 1:
            raise RuntimeError("first time")
        return "second time"

    job = await once_bad.enqueue()
    await aw.drain()
    failed = await aw.get_job(job.id)
    assert failed is not None and failed.status is JobStatus.FAILED
    retried = await aw.retry(job.id)
    assert retried is not None and retried.status is JobStatus.QUEUED and retried.attempts == 0
    await aw.drain()
    done = await aw.get_job(job.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == "second time"
    # A succeeded job is not retried.
    same = await aw.retry(job.id)
    assert same is not None and same.status is JobStatus.SUCCEEDED


async def test_list_filters_and_cursor_pagination(aw: Afterwork, clock: FakeClock) -> None:
    @aw.task(queue="a")
    async def first(n: int) -> None: ...

    @aw.task(queue="b")
    async def second(n: int) -> None: ...

    ids = []
    for n in range(7):
        ids.append((await first.enqueue(n)).id)
        ids.append((await second.enqueue(n)).id)
        clock.advance(1)
    everything = await aw.list_jobs(limit=100)
    assert [j.id for j in everything] == sorted(ids, reverse=True)
    page1 = await aw.list_jobs(queue="a", limit=3)
    page2 = await aw.list_jobs(queue="a", limit=3, before=page1[-1].id)
    page3 = await aw.list_jobs(queue="a", limit=3, before=page2[-1].id)
    seen = [j.id for j in page1 + page2 + page3]
    assert len(seen) == 7 and len(set(seen)) == 7
    assert all(j.queue == "a" for j in page1 + page2 + page3)
    assert {j.task for j in await aw.list_jobs(task=second.name, limit=100)} == {second.name}
    await aw.cancel(ids[0])
    cancelled = await aw.list_jobs(status=JobStatus.CANCELLED)
    assert [j.id for j in cancelled] == [ids[0]]
    backend_page = await aw.backend.list_jobs(JobFilter(statuses=[JobStatus.QUEUED], limit=2))
    assert len(backend_page) == 2


async def test_stats_count_per_queue_and_status(aw: Afterwork, clock: FakeClock) -> None:
    @aw.task(queue="q1")
    async def work() -> None: ...

    a = await work.enqueue()
    await work.enqueue()
    await work.options(delay=100).enqueue()
    await aw.cancel(a.id)
    stats = {s.queue: s for s in await aw.stats()}
    q1 = stats["q1"]
    assert q1.counts[JobStatus.QUEUED] == 1
    assert q1.counts[JobStatus.SCHEDULED] == 1
    assert q1.counts[JobStatus.CANCELLED] == 1
    assert q1.counts[JobStatus.SUCCEEDED] == 0
    assert q1.oldest_waiting_at is not None and q1.oldest_waiting_at <= clock()


async def test_every_state_change_is_an_allowed_transition(aw: Afterwork, clock: FakeClock) -> None:
    @aw.task(retries=1, backoff=Retry.fixed(0))
    async def sometimes(ctx: JobContext, fail: bool) -> None:
        if fail and ctx.attempt == 1:
            raise RuntimeError("once")

    events: list[JobEvent] = []
    ids: set[str] = set()
    all_final = asyncio.Event()
    stream = aw.backend.events()

    async def collect() -> None:
        async for event in stream:
            events.append(event)
            finished = {e.job_id for e in events if e.status in TERMINAL_STATUSES}
            if ids and ids <= finished:
                all_final.set()

    async with asyncio.timeout(10):
        consumer = asyncio.create_task(collect())
        jobs = [await sometimes.enqueue(fail=f) for f in (True, False)]
        cancelled = await sometimes.options(delay=10).enqueue(fail=False)
        ids.update({j.id for j in jobs} | {cancelled.id})
        await aw.cancel(cancelled.id)
        await aw.drain()
        clock.advance(1)
        await aw.drain()
        # Events may travel between processes: wait for every job's final one.
        await all_final.wait()
        consumer.cancel()
        await stream.aclose()
    history: dict[str, list[JobStatus]] = defaultdict(list)
    for event in events:
        if event.job_id in ids and (
            not history[event.job_id] or history[event.job_id][-1] is not event.status
        ):
            history[event.job_id].append(event.status)
    for job_id, statuses in history.items():
        for old, new_status in zip(statuses, statuses[1:], strict=False):
            assert new_status in TRANSITIONS[old], (job_id, statuses)
    kinds = [e.kind for e in events if e.job_id == jobs[0].id]
    assert kinds[0] == "enqueued"
    assert "retrying" in kinds and kinds[-1] == "succeeded"


async def test_enqueue_batch_is_atomic_and_ordered(aw: Afterwork) -> None:
    batch = [new(task=f"t{i}") for i in range(20)]
    jobs = await aw.backend.enqueue(batch)
    assert [j.id for j in jobs] == [n.id for n in batch]
    assert all(j.status is JobStatus.QUEUED for j in jobs)


async def test_error_and_result_round_trip(aw: Afterwork) -> None:
    backend = aw.backend
    await backend.enqueue([new(), new()])
    c1, c2 = await backend.claim("w", queues=None, limit=2, lease_ttl=10.0)
    result = {"nested": [1, 2.5, "three", None, True], "unicode": "héllo ✓"}
    ok = await backend.finish(c1.lease, Outcome.succeeded(result))
    assert ok is not None and ok.result == result
    error = JobError(type="x.Y", message="<script>alert(1)</script>", traceback="tb\nline")
    bad = await backend.finish(c2.lease, Outcome.failed(error))
    assert bad is not None and bad.error == error
    fetched = await backend.get(c2.job.id)
    assert fetched is not None and fetched.error == error
    assert (await backend.get(c1.job.id)) is not None


async def test_wait_for_job_returns_when_finished(make_aw: AwFactory) -> None:
    aw = make_aw(clock=None)  # a real clock: a real worker runs here
    async with aw:

        @aw.task
        async def quick(x: int) -> int:
            return x * 2

        async with aw.worker(concurrency=2):
            job = await quick.enqueue(21)
            done = await job.wait(timeout=10)
        assert done.status is JobStatus.SUCCEEDED and done.result == 42
        pending = await quick.options(delay=3600).enqueue(1)
        with pytest.raises(TimeoutError):
            await pending.wait(timeout=0.2)


async def test_lease_object_round_trip(aw: Afterwork) -> None:
    (job,) = await aw.backend.enqueue([new()])
    (claim,) = await aw.backend.claim("w", queues=["default"], limit=1, lease_ttl=5.0)
    assert claim.lease == Lease(job.id, claim.token)


async def test_each_tick_is_enqueued_exactly_once(aw: Afterwork) -> None:
    backend = aw.backend
    assert await backend.last_tick("nightly") is None
    results = await asyncio.gather(
        *(backend.enqueue_tick("nightly", 1000.0, new(task="report")) for _ in range(10))
    )
    created = [job for job in results if job is not None]
    assert len(created) == 1
    # Finished or not, the tick stays taken.
    assert await backend.enqueue_tick("nightly", 1000.0, new(task="report")) is None
    other = await backend.enqueue_tick("nightly", 1060.0, new(task="report"))
    assert other is not None
    assert await backend.enqueue_tick("hourly", 1000.0, new(task="report")) is not None
    assert await backend.last_tick("nightly") == 1060.0
    assert await backend.enqueue_tick("nightly", 1030.0, new(task="report")) is not None
    assert await backend.last_tick("nightly") == 1060.0


async def test_enqueue_of_an_existing_id_returns_that_job_and_stores_no_second(
    aw: Afterwork,
) -> None:
    """What makes a retried enqueue safe (issue 14): the id is made before the write."""
    job = new("t", args=[1])
    (first,) = await aw.backend.enqueue([job])
    (again,) = await aw.backend.enqueue([job])
    (changed,) = await aw.backend.enqueue([NewJob(id=job.id, task="t", args=[2])])
    assert again.id == first.id == changed.id
    assert changed.args == [1]
    assert again.args == [1]
    assert again.created_at == first.created_at
    stored = await aw.list_jobs()
    assert [j.id for j in stored] == [job.id]


# -- headers: small string metadata carried from the enqueue to every attempt ---------------


async def test_headers_round_trip_from_enqueue_to_every_attempt(aw: Afterwork) -> None:
    """What an enqueue middleware adds to ``call.headers`` is stored with the job and
    read back by each attempt (here: the first fails, the retry reads them too)."""
    seen: list[tuple[str, dict[str, str]]] = []
    tries: list[int] = []

    @aw.middleware
    async def stamp(call: JobCall, call_next: Any) -> Job | None:
        if call.kind == "enqueue":
            call.headers["traceparent"] = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
            call.headers["x-request-id"] = "réq 42 ✓"  # any Unicode string
        else:
            seen.append((call.job_id, dict(call.headers)))
        result: Job | None = await call_next()
        return result

    @aw.task(retries=1, backoff=Retry.fixed(0.0))
    async def flaky() -> None:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("first try")

    job = await flaky.enqueue()
    expected = {
        "traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
        "x-request-id": "réq 42 ✓",
    }
    assert job.headers == expected
    stored = await aw.get_job(job.id)
    assert stored is not None and stored.headers == expected
    assert stored == job
    assert await aw.drain() == 2  # the failed attempt, then its retry (no backoff)
    assert seen == [(job.id, expected), (job.id, expected)]
    done = await aw.get_job(job.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert done.headers == expected
    listed = await aw.list_jobs()
    assert [j.headers for j in listed] == [expected]


async def test_headers_are_kept_per_job_in_a_batch_and_empty_by_default(aw: Afterwork) -> None:
    backend = aw.backend
    jobs = [new(headers={"n": str(i)} if i % 2 else {}) for i in range(5)]
    created = await backend.enqueue(jobs)
    assert [job.headers for job in created] == [{"n": str(i)} if i % 2 else {} for i in range(5)]
    for job in created:
        assert (await backend.get(job.id)) == job
    claims = await backend.claim("w", queues=["default"], limit=5, lease_ttl=5.0)
    assert sorted(c.job.headers.get("n", "") for c in claims) == ["", "", "", "1", "3"]
    started = await backend.start(new(headers={"k": "v"}), "web", lease_ttl=5.0)
    assert started.job.headers == {"k": "v"}
    assert (await backend.get(started.job.id)) == started.job
    tick = await backend.enqueue_tick("nightly", 1000.0, new(headers={"afterwork-schedule": "n"}))
    assert tick is not None and tick.headers == {"afterwork-schedule": "n"}
    assert (await backend.get(tick.id)) == tick


async def test_a_ticks_job_names_its_schedule_in_its_headers(aw: Afterwork) -> None:
    seen: list[dict[str, str]] = []

    @aw.every(timedelta(seconds=30), name="poll")
    async def poll(ctx: JobContext) -> None:
        seen.append(dict(ctx.job.headers))

    (job,) = await aw.scheduler.run_pending()
    assert job.headers == {SCHEDULE_HEADER: "poll"}
    assert await aw.drain() == 1
    assert seen == [{SCHEDULE_HEADER: "poll"}]


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"n": 1}, "must be a string"),
        ({"": "v"}, "non-empty strings"),
        ({"big": "x" * MAX_HEADERS_BYTES}, f"at most {MAX_HEADERS_BYTES}"),
        ({str(i): "" for i in range(MAX_HEADERS + 1)}, f"at most {MAX_HEADERS}"),
        ({"bad": "\ud800"}, "not valid Unicode"),
    ],
)
async def test_bad_headers_are_refused_and_nothing_is_stored(
    aw: Afterwork, headers: dict[Any, Any], problem: str
) -> None:
    @aw.middleware
    async def stamp(call: JobCall, call_next: Any) -> Job | None:
        call.headers.update(headers)
        result: Job | None = await call_next()
        return result

    @aw.task
    async def noop() -> None: ...

    with pytest.raises(EnqueueError, match=problem) as caught:
        await noop.enqueue()
    assert caught.value.field == "headers"
    assert await aw.list_jobs() == []

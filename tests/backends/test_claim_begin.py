"""A claim that also begins the jobs a worker starts at once (the optional ``ClaimBegins``
protocol), on every store that implements it.

The worker still sees claims, then begun jobs from its ``begin``; what the store records
must not depend on whether the claim began them: the begun record and its ``started``
event are exactly what ``begin`` writes (``_lifecycle.begin``), ``begin`` afterwards
writes nothing more, and a claim released or cancelled before the worker's ``begin``
leaves no attempt (nor a start in its rate group's log).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from afterwork import Afterwork, JobStatus, RateLimit
from afterwork import _lifecycle as life
from afterwork.backends.base import ClaimBegins, EventStream, NewJob, Outcome, RateLimits
from afterwork.job import JobError, JobEvent, new_job_id
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio

#: The stores whose claim can begin (``claims_begin``).
STORES = ["redis", "redis-cluster", "postgres"]

#: The fields every begin must agree on (the model-based test's, ids and times included).
FIELDS = (
    "status",
    "attempts",
    "recoveries",
    "run_at",
    "started_at",
    "finished_at",
    "progress",
    "worker",
    "lease_expires_at",
    "cancel_requested",
    "timeline",
)


@pytest.fixture(params=STORES)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def new(**fields: Any) -> NewJob:
    return NewJob(id=new_job_id(), task="t", **fields)


def store(aw: Afterwork) -> Any:
    backend = aw.backend
    assert isinstance(backend, ClaimBegins) and backend.claims_begin()
    return backend


async def kinds(stream: EventStream, count: int) -> list[tuple[str, str, int]]:
    """The next ``count`` events but enqueues, as (kind, job id, attempts)."""
    got: list[tuple[str, str, int]] = []
    with anyio.fail_after(10):
        while len(got) < count:
            event: JobEvent = await anext(stream)
            if event.kind != "enqueued":
                got.append((event.kind, event.job_id, event.attempts))
    return got


async def test_a_claim_begins_the_first_jobs_and_the_worker_still_gets_claims(
    aw: Afterwork,
) -> None:
    backend = store(aw)
    stream = backend.events()
    try:
        jobs = await backend.enqueue([new(priority=3 - n) for n in range(3)])
        claims = await backend.claim("w", queues=None, limit=3, lease_ttl=30.0, begin=2)
        assert [c.job.id for c in claims] == [j.id for j in jobs]
        assert all(c.job.attempts == 0 and c.job.started_at is None for c in claims)
        stored = [await backend.get(j.id) for j in jobs]
        assert [s.attempts if s else None for s in stored] == [1, 1, 0]
        assert [s.started_at is not None if s else None for s in stored] == [True, True, False]
        assert await kinds(stream, 2) == [("started", jobs[0].id, 1), ("started", jobs[1].id, 1)]
        begun = await backend.begin([c.lease for c in claims])
        assert [b.attempts if b else None for b in begun] == [1, 1, 1]
        assert [b.started_at if b else None for b in begun[:2]] == [
            s.started_at if s else None for s in stored[:2]
        ]
        # Beginning the begun ones again changed nothing; the third began in its own write.
        assert await kinds(stream, 1) == [("started", jobs[2].id, 1)]
        done = await backend.finish(claims[0].lease, Outcome.succeeded(1))
        assert done is not None and done.attempts == 1
        assert [a.outcome for a in done.timeline] == ["succeeded"]
        assert await kinds(stream, 1) == [("succeeded", jobs[0].id, 1)]
    finally:
        await stream.aclose()


async def test_a_job_not_begun_by_its_claim_begins_while_others_wait_for_their_begin(
    aw: Afterwork,
) -> None:
    backend = store(aw)
    await backend.enqueue([new(), new(), new()])
    claims = await backend.claim("w", queues=None, limit=3, lease_ttl=30.0, begin=1)
    # The claim began the first; the others begin one by one, in their own writes.
    for claim in claims[:0:-1]:
        (begun,) = await backend.begin([claim.lease])
        assert begun is not None and begun.attempts == 1
    (first,) = await backend.begin([claims[0].lease])
    assert first is not None and first.attempts == 1


async def test_the_begun_record_is_what_begin_writes(aw: Afterwork, clock: FakeClock) -> None:
    backend = store(aw)
    error = JobError.from_message("E", "first attempt")
    (job,) = await backend.enqueue([new(max_attempts=3)])
    # A second attempt, with a timeline and progress kept from the first.
    (first,) = await backend.claim("w", queues=None, limit=1, lease_ttl=30.0)
    await backend.begin([first.lease])
    await backend.set_progress(first.lease, 0.5, "half")
    await backend.finish(first.lease, Outcome.retry(error, delay=0.0))
    clock.advance(1)
    waiting = await backend.get(job.id)
    assert waiting is not None and waiting.status is JobStatus.SCHEDULED
    (claim,) = await backend.claim("w2", queues=None, limit=1, lease_ttl=30.0, begin=1)
    stored = await backend.get(job.id)
    assert stored is not None
    # The claim (``life.promote``, ``life.claim``), then ``life.begin``: the one state
    # machine's record is the one stored, and the worker was handed the claim.
    promoted = life.promote(waiting, clock())
    assert promoted is not None
    claimed = life.claim(promoted.job, worker="w2", now=clock(), lease_ttl=30.0).job
    for name in FIELDS:
        assert getattr(claim.job, name) == getattr(claimed, name), name
    want = life.begin(claimed, held=claim.token, token=claim.token, now=clock())
    assert want is not None and want.event == "started"
    for name in FIELDS:
        assert getattr(stored, name) == getattr(want.job, name), name
    (begun,) = await backend.begin([claim.lease])
    assert begun is not None
    for name in FIELDS:
        assert getattr(begun, name) == getattr(want.job, name), name


async def test_a_claim_released_before_its_begin_leaves_no_attempt(aw: Afterwork) -> None:
    backend = store(aw)
    (job,) = await backend.enqueue([new(max_attempts=2)])
    (claim,) = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0, begin=5)
    back = await backend.finish(claim.lease, Outcome.released())
    assert back is not None and back.status is JobStatus.QUEUED
    stored = await backend.get(job.id)
    assert stored is not None and stored.status is JobStatus.QUEUED
    assert stored.attempts == 0 and stored.started_at is None and stored.timeline == ()
    assert stored.worker is None
    # It is claimed and run as if it had never been.
    (again,) = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0)
    (begun,) = await backend.begin([again.lease])
    assert begun is not None and begun.attempts == 1


async def test_a_begun_claim_cancelled_before_its_begin_leaves_no_attempt(aw: Afterwork) -> None:
    backend = store(aw)
    (job,) = await backend.enqueue([new()])
    (claim,) = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0, begin=1)
    error = JobError.from_message("afterwork.Cancelled", "cancelled before it started")
    done = await backend.finish(claim.lease, Outcome.cancelled(error))
    assert done is not None and done.status is JobStatus.CANCELLED
    stored = await backend.get(job.id)
    assert stored is not None and stored.status is JobStatus.CANCELLED
    assert stored.attempts == 0 and stored.started_at is None and stored.timeline == ()


async def test_a_stale_lease_of_a_begun_claim_writes_nothing(
    aw: Afterwork, clock: FakeClock
) -> None:
    backend = store(aw)
    (job,) = await backend.enqueue([new(max_attempts=3)])
    (claim,) = await backend.claim("w", queues=None, limit=1, lease_ttl=10.0, begin=1)
    clock.advance(11)
    (recovered,) = await backend.recover_expired(max_recoveries=3)
    assert recovered.id == job.id and recovered.attempts == 1  # it had started: charged
    # The lease is fenced out, though its claim began the job: nothing is handed out.
    assert await backend.begin([claim.lease]) == [None]
    (again,) = await backend.claim("w2", queues=None, limit=1, lease_ttl=10.0)
    assert await backend.finish(claim.lease, Outcome.released()) is None
    stored = await backend.get(job.id)
    assert stored is not None and stored.status is JobStatus.RUNNING
    assert stored.worker == "w2" and stored.attempts == 1
    (begun,) = await backend.begin([again.lease])
    assert begun is not None and begun.attempts == 2


async def test_a_job_that_runs_alone_is_not_begun_by_the_claim(
    aw: Afterwork, clock: FakeClock
) -> None:
    backend = store(aw)
    first, second = await backend.enqueue([new(priority=1), new()])
    (claim,) = await backend.claim("w", queues=None, limit=1, lease_ttl=10.0)
    assert (await backend.begin([claim.lease]))[0] is not None
    clock.advance(11)
    (recovered,) = await backend.recover_expired(max_recoveries=3)
    assert recovered.id == first.id and recovered.recoveries == 1
    claims = await backend.claim("w2", queues=None, limit=5, lease_ttl=10.0, begin=5)
    assert [c.job.id for c in claims] == [first.id, second.id]
    for job in (first, second):
        stored = await backend.get(job.id)
        assert stored is not None and stored.status is JobStatus.RUNNING
        assert stored.started_at is None  # the worker begins them as it admits them


async def test_a_rate_limited_claim_that_begins_logs_its_start_and_a_release_takes_it_back(
    aw: Afterwork, clock: FakeClock
) -> None:
    backend = store(aw)
    assert isinstance(aw.backend, RateLimits)
    rates = {"t": RateLimit(1, per=60.0)}
    first, second = await backend.enqueue([new(), new()])
    (claim,) = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0, rates=rates, begin=5)
    assert claim.job.id == first.id
    now = backend.now()
    assert await backend.rate_starts("t", rates["t"]) == [pytest.approx(now)]
    assert await backend.claim("w", queues=None, limit=5, lease_ttl=30.0, rates=rates) == []
    # Released before the worker ran it: no start left in the window, so the next may start.
    await backend.finish(claim.lease, Outcome.released())
    assert await backend.rate_starts("t", rates["t"]) == []
    clock.advance(1)
    (again,) = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0, rates=rates, begin=5)
    assert again.job.id == first.id
    (begun,) = await backend.begin([again.lease])
    assert begun is not None and begun.attempts == 1 and begun.started_at is not None
    assert await backend.rate_starts("t", rates["t"]) == [pytest.approx(begun.started_at)]
    done = await backend.finish(again.lease, Outcome.succeeded())
    assert done is not None and [a.outcome for a in done.timeline] == ["succeeded"]
    # The start stays in the window after the job ended: the second waits for it.
    assert await backend.claim("w", queues=None, limit=5, lease_ttl=30.0, rates=rates) == []
    clock.advance(60)
    (last,) = await backend.claim("w", queues=None, limit=5, lease_ttl=30.0, rates=rates, begin=1)
    assert last.job.id == second.id


async def test_a_worker_runs_jobs_its_claims_began(aw: Afterwork) -> None:
    ran: list[int] = []

    @aw.task
    async def work(n: int) -> int:
        ran.append(n)
        return n

    jobs = [await work.enqueue(n) for n in range(5)]
    assert await aw.drain(concurrency=2) == 5
    assert sorted(ran) == list(range(5))
    for job in jobs:
        done = await aw.get_job(job.id)
        assert done is not None and done.status is JobStatus.SUCCEEDED
        assert done.attempts == 1 and [a.outcome for a in done.timeline] == ["succeeded"]

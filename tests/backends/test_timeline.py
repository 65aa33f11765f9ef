"""Each attempt is kept on the job (its timeline), on every store."""

from __future__ import annotations

import pytest

from afterwork import Afterwork, JobStatus, Retry
from afterwork.backends.base import NewJob, Outcome
from afterwork.job import MAX_TIMELINE, new_job_id
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio


async def test_a_job_that_succeeds_on_its_third_attempt_keeps_all_three(
    aw: Afterwork, clock: FakeClock
) -> None:
    calls: list[int] = []

    @aw.task(retries=3, backoff=Retry.fixed(5.0))
    async def flaky() -> str:
        calls.append(1)
        clock.advance(2.0)  # each attempt takes 2 s by the store's clock
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return "ok"

    job = await flaky.enqueue()
    for _ in range(3):
        await aw.drain()
        clock.advance(5.0)
    done = await aw.get_job(job.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == "ok"
    assert done.error is None  # the final attempt's: it succeeded
    timeline = done.timeline
    assert [a.number for a in timeline] == [1, 2, 3]
    assert [a.outcome for a in timeline] == ["retrying", "retrying", "succeeded"]
    for attempt, message in zip(timeline[:2], ["try 1", "try 2"], strict=True):
        assert attempt.error is not None
        assert attempt.error.type == "ConnectionError" and attempt.error.message == message
        assert "raise ConnectionError" in attempt.error.traceback
    assert timeline[2].error is None
    for attempt in timeline:
        assert attempt.worker is not None
        assert attempt.duration == pytest.approx(2.0, abs=1e-3)
    assert timeline[0].ended_at <= timeline[1].started_at  # type: ignore[operator]
    assert done.to_dict()["timeline"][0]["error"]["message"] == "try 1"


async def test_the_final_error_is_the_last_attempts(aw: Afterwork) -> None:
    @aw.task(retries=1, backoff=Retry.fixed(0.0))
    async def broken() -> None:
        raise ValueError("always")

    job = await broken.enqueue()
    await aw.drain()
    done = await aw.get_job(job.id)
    assert done is not None and done.status is JobStatus.FAILED
    assert [a.outcome for a in done.timeline] == ["retrying", "failed"]
    assert done.error == done.timeline[-1].error
    assert done.error is not None and done.error.message == "always"


async def test_a_worker_lost_mid_attempt_is_in_the_timeline(
    aw: Afterwork, clock: FakeClock
) -> None:
    backend = aw.backend
    await backend.enqueue([NewJob(id=new_job_id(), task="t", max_attempts=3)])
    (claim,) = await backend.claim("w1", queues=None, limit=1, lease_ttl=10.0)
    (begun,) = await backend.begin([claim.lease])
    assert begun is not None and begun.timeline == ()  # the running attempt is not in it yet
    clock.advance(11)
    (recovered,) = await backend.recover_expired(max_recoveries=3)
    (lost,) = recovered.timeline
    assert (lost.number, lost.worker, lost.outcome) == (1, "w1", "lost")
    assert lost.error is not None and lost.error.type == "afterwork.WorkerLost"
    assert lost.duration == pytest.approx(11.0, abs=1e-3)
    (again,) = await backend.claim("w2", queues=None, limit=1, lease_ttl=10.0)
    await backend.begin([again.lease])
    done = await backend.finish(again.lease, Outcome.succeeded(1))
    assert done is not None and done.error is None
    assert [(a.number, a.worker, a.outcome) for a in done.timeline] == [
        (1, "w1", "lost"),
        (2, "w2", "succeeded"),
    ]
    stored = await backend.get(done.id)
    assert stored is not None and stored.timeline == done.timeline


async def test_a_released_attempt_is_kept_and_not_charged(aw: Afterwork) -> None:
    backend = aw.backend
    await backend.enqueue([NewJob(id=new_job_id(), task="t")])
    (claim,) = await backend.claim("w1", queues=None, limit=1, lease_ttl=10.0)
    await backend.begin([claim.lease])
    back = await backend.finish(claim.lease, Outcome.released())
    assert back is not None and back.status is JobStatus.QUEUED and back.attempts == 0
    assert [(a.number, a.outcome) for a in back.timeline] == [(1, "released")]


async def test_the_timeline_keeps_the_last_attempts_only(aw: Afterwork) -> None:
    attempts = MAX_TIMELINE + 5

    @aw.task(retries=attempts - 1, backoff=Retry.fixed(0.0))
    async def hopeless() -> None:
        raise RuntimeError("no")

    job = await hopeless.enqueue()
    await aw.drain()
    done = await aw.get_job(job.id)
    assert done is not None and done.status is JobStatus.FAILED and done.attempts == attempts
    assert len(done.timeline) == MAX_TIMELINE
    assert [a.number for a in done.timeline] == list(range(6, attempts + 1))
    assert done.timeline[-1].outcome == "failed"

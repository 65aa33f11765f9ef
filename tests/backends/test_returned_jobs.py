"""What ``begin`` and ``finish`` return is the job the store then holds.

A store may return the job the lifecycle computed instead of reading its record back (the
PostgreSQL batch and the Redis group commit do, to spare a decode per start and finish):
these check that it is the same job, even when something the writer did not own moved
between its read and its write (a progress report, a renewed lease, a cancel request).
"""

from __future__ import annotations

from typing import Any

import pytest

from afterwork import Afterwork, JobStatus
from afterwork.backends.base import NewJob, Outcome
from afterwork.job import Job, JobError, new_job_id
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio


def new(**fields: Any) -> NewJob:
    return NewJob(id=new_job_id(), task="t", **fields)


async def read(aw: Afterwork, job: Job | None) -> Job:
    assert job is not None
    stored = await aw.backend.get(job.id)
    assert stored is not None
    return stored


async def test_begin_and_finish_return_the_stored_job(aw: Afterwork, clock: FakeClock) -> None:
    backend = aw.backend
    await backend.enqueue([new(max_attempts=2)])
    (claim,) = await backend.claim("w1", queues=None, limit=1, lease_ttl=10.0)
    clock.advance(0.25)
    (begun,) = await backend.begin([claim.lease])
    assert begun == await read(aw, begun)
    clock.advance(0.5)
    assert await backend.set_progress(claim.lease, 0.5, "half")
    clock.advance(0.25)
    done = await backend.finish(claim.lease, Outcome.succeeded({"n": [1, 2.5, "é"]}))
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert done.progress == 0.5 and done.progress_message == "half"
    assert done == await read(aw, done)


async def test_a_start_after_a_heartbeat_and_a_cancel_request(
    aw: Afterwork, clock: FakeClock
) -> None:
    backend = aw.backend
    (job,) = await backend.enqueue([new(max_attempts=3)])
    (claim,) = await backend.claim("w1", queues=None, limit=1, lease_ttl=10.0)
    clock.advance(1.0)
    await backend.heartbeat([claim.lease], lease_ttl=10.0)  # the lease moved
    await backend.cancel(job.id)  # a cancel request, made elsewhere
    (begun,) = await backend.begin([claim.lease])
    assert begun is not None and begun.cancel_requested
    assert begun == await read(aw, begun)
    clock.advance(1.0)
    error = JobError.from_message("Boom", "it failed")
    retried = await backend.finish(claim.lease, Outcome.retry(error, 2.0))
    assert retried is not None and retried.status is JobStatus.SCHEDULED
    assert retried == await read(aw, retried)

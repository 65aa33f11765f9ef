"""A heartbeat reply that names a job as lost stops its run, unless its outcome is being
written: a finish applied but not yet acknowledged (its reply lost in an outage, then
retried) already ended the lease, and that run must not be reported as taken over."""

from __future__ import annotations

import logging

import pytest

from afterwork._engine.runner import LOST, JobRun, apply_heartbeat
from afterwork.backends.base import NewJob, Outcome
from afterwork.backends.memory import MemoryBackend
from afterwork.job import new_job_id

pytestmark = pytest.mark.anyio


async def test_a_run_writing_its_outcome_is_not_reported_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryBackend()
    await store.open()
    await store.enqueue([NewJob(id=new_job_id(), task="t"), NewJob(id=new_job_id(), task="t")])
    first, second = await store.claim("w", queues=None, limit=2, lease_ttl=10.0)
    await store.begin([first.lease, second.lease])
    # Both finishes are applied by the store; the worker has not heard back yet.
    assert await store.finish(first.lease, Outcome.succeeded(1)) is not None
    assert await store.finish(second.lease, Outcome.succeeded(2)) is not None
    reply = await store.heartbeat([first.lease, second.lease], lease_ttl=10.0)
    assert reply.lost == {first.job.id, second.job.id}

    writing, running = JobRun(first), JobRun(second)
    writing.recording = True
    with caplog.at_level(logging.WARNING, logger="afterwork.runner"):
        apply_heartbeat(reply, {first.job.id: writing, second.job.id: running}, "w")
    assert writing.reason is None and not writing.scope.cancel_called
    assert running.reason == LOST and running.scope.cancel_called
    lost_lines = [r.getMessage() for r in caplog.records if "lost its lease" in r.getMessage()]
    assert lost_lines == [
        f"job {second.job.id} (t) lost its lease (another worker took it over); stopping it"
    ]
    await store.aclose()

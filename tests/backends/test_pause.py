"""Paused queues, on every store: enqueues accepted, nothing started, state kept."""

from __future__ import annotations

import asyncio

import pytest

from afterwork import Afterwork, JobStatus
from afterwork.backends.base import NewJob, Outcome, QueuePause
from afterwork.job import new_job_id

from .conftest import AwFactory

pytestmark = pytest.mark.anyio


def new(queue: str, **fields: object) -> NewJob:
    return NewJob(id=new_job_id(), task="t", queue=queue, **fields)  # type: ignore[arg-type]


async def test_a_paused_queue_accepts_jobs_and_hands_out_none(aw: Afterwork) -> None:
    backend = aw.backend
    assert isinstance(backend, QueuePause)
    (running,) = await backend.enqueue([new("media")])
    (held,) = await backend.claim("w", queues=None, limit=5, lease_ttl=10.0)
    await aw.pause("media")
    assert await aw.paused_queues() == {"media"}
    waiting = await backend.enqueue([new("media"), new("media", delay=0.0)])
    (other,) = await backend.enqueue([new("default")])
    for queues in (None, ["media"], ["media", "default"]):
        claims = await backend.claim("w", queues=queues, limit=5, lease_ttl=10.0)
        assert [c.job.id for c in claims] == ([] if queues == ["media"] else [other.id])
        for claim in claims:
            await backend.finish(claim.lease, Outcome.released())
    # The job claimed before the pause runs to its end.
    done = await backend.finish(held.lease, Outcome.succeeded())
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.id == running.id
    await aw.resume("media")
    await aw.resume("media")  # idempotent
    assert await aw.paused_queues() == frozenset()
    claims = await backend.claim("w", queues=["media"], limit=5, lease_ttl=10.0)
    assert {c.job.id for c in claims} == {job.id for job in waiting}


async def test_the_pause_holds_for_the_flow_limited_claim_too(aw: Afterwork) -> None:
    from afterwork.backends.base import FlowLimit

    await aw.backend.enqueue([new("media")])
    await aw.pause("media")
    limits = {"t": FlowLimit(5)}
    assert await aw.backend.claim("w", queues=None, limit=5, lease_ttl=1.0, limits=limits) == []
    await aw.resume("media")
    assert len(await aw.backend.claim("w", queues=None, limit=5, lease_ttl=1.0, limits=limits)) == 1


async def test_a_pause_survives_a_restart_and_binds_every_instance(
    make_aw: AwFactory, backend_name: str
) -> None:
    if backend_name == "memory":
        pytest.skip("a memory store does not outlive its instance")
    first = make_aw()
    async with first:
        await first.pause("media")
    second, third = make_aw(), make_aw()

    @second.task(name="encode", queue="media")
    async def encode(n: int) -> int:
        return n

    async with second, third:
        assert await third.paused_queues() == {"media"}
        job = await encode.enqueue(1)
        assert job.status is JobStatus.QUEUED
        assert await second.drain() == 0
        await third.resume("media")
        assert await second.drain() == 1
        done = await second.get_job(job.id)
        assert done is not None and done.status is JobStatus.SUCCEEDED


@pytest.mark.timeout(20)
async def test_a_worker_does_not_spin_on_a_paused_queue(aw: Afterwork) -> None:
    @aw.task(queue="media")
    async def encode() -> None: ...

    calls = {"n": 0}
    original = aw.backend.claim

    async def counting_claim(*args, **kwargs):
        calls["n"] += 1
        return await original(*args, **kwargs)

    aw.backend.claim = counting_claim  # type: ignore[method-assign]
    await aw.pause("media")
    job = await encode.enqueue()
    async with aw.worker(concurrency=2):
        await asyncio.sleep(0.5)  # the thing under test is what happens while time passes
        assert calls["n"] <= 6, calls["n"]
        assert (await aw.get_job(job.id)).status is JobStatus.QUEUED  # type: ignore[union-attr]
        await aw.resume("media")
        done = await job.wait(timeout=10)
    assert done.status is JobStatus.SUCCEEDED


def test_a_bad_queue_name_is_refused() -> None:
    aw = Afterwork("memory://")
    with pytest.raises(ValueError, match="queue"):
        asyncio.run(aw.pause(""))

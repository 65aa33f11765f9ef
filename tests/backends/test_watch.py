"""``aw.watch(job_id)`` on every store: the state first, each change, the end; resumable."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from afterwork import Afterwork, JobContext, JobEvent, JobStatus, Retry
from afterwork.exceptions import JobNotFound

from .conftest import AwFactory

pytestmark = pytest.mark.anyio


async def collect(aw: Afterwork, job_id: str, since: str | None = None) -> list[JobEvent]:
    with anyio.fail_after(10):
        return [event async for event in aw.watch(job_id, since=since)]


async def test_watch_yields_the_state_then_every_change_and_ends(make_aw: AwFactory) -> None:
    aw = make_aw(poll_interval=0.05)
    gate = anyio.Event()
    seen: list[JobEvent] = []
    first_seen = anyio.Event()

    @aw.task(retries=1, backoff=Retry.fixed(0))
    async def upload(ctx: JobContext) -> str:
        await gate.wait()
        ctx.progress(0.5, "half")
        if ctx.attempt == 1:
            raise ConnectionError("flaky")
        return "done"

    async with aw:
        job = await upload.enqueue()

        async def watcher() -> None:
            with anyio.fail_after(10):
                async for event in aw.watch(job.id):
                    seen.append(event)
                    first_seen.set()

        async with anyio.create_task_group() as group:
            group.start_soon(watcher)
            await first_seen.wait()
            async with aw.worker():
                gate.set()
                await aw.join(timeout=10)
    assert seen[0].kind == "snapshot" and seen[0].status is JobStatus.QUEUED
    assert seen[-1].status is JobStatus.SUCCEEDED
    statuses = [e.status for e in seen]
    assert JobStatus.SCHEDULED in statuses  # the failed attempt, retried
    assert any(e.progress == 0.5 for e in seen)
    assert all(e.job_id == job.id for e in seen)
    ids = [e.id for e in seen[1:]]
    assert all(ids) and len(set(ids)) == len(ids)


async def test_watch_a_finished_job_gives_its_state_and_ends(aw: Afterwork) -> None:
    @aw.task
    async def quick() -> int:
        return 1

    job = await quick.enqueue()
    await aw.drain()
    events = await collect(aw, job.id)
    assert [(e.kind, e.status) for e in events] == [("snapshot", JobStatus.SUCCEEDED)]
    with pytest.raises(JobNotFound):
        await collect(aw, "no-such-job")


async def test_watch_resumes_after_a_reconnect_missing_nothing(aw: Afterwork) -> None:
    @aw.task(retries=2, backoff=Retry.fixed(0))
    async def flaky(ctx: JobContext) -> None:
        if ctx.attempt < 3:
            raise ConnectionError("again")

    job = await flaky.enqueue()
    # A first reader sees the snapshot and the first change, then goes away.
    first: list[JobEvent] = []
    async with anyio.create_task_group() as group:

        async def reader() -> None:
            with anyio.fail_after(10):
                async for event in aw.watch(job.id):
                    first.append(event)
                    if len(first) == 2:
                        return  # the reader goes away (its subscription ends)

        group.start_soon(reader)
        await anyio.lowlevel.checkpoint()  # let it subscribe
        await aw.drain()
    last = first[-1].id
    assert last is not None
    await aw.drain()
    await aw.drain()
    rest = await collect(aw, job.id, since=last)
    everything = await _history(aw, job.id)
    # Resuming gives exactly the job's events after ``last``: none missed, none twice.
    after = [e.id for e in everything if _order(e.id) > _order(last)]
    assert [e.id for e in rest] == after
    assert rest[-1].status is JobStatus.SUCCEEDED


async def _history(aw: Afterwork, job_id: str) -> list[JobEvent]:
    """All of the job's kept events, read from the start of the store's history."""
    from afterwork.backends.base import EventHistory

    assert isinstance(aw.backend, EventHistory)
    found: list[JobEvent] = []
    stream = aw.backend.events(since="0" if "redis" not in aw.url else "0-0")
    try:
        with anyio.move_on_after(1):  # the history, then nothing more comes
            async for event in stream:
                if event.job_id == job_id:
                    found.append(event)
                    if event.status is JobStatus.SUCCEEDED:
                        break
    finally:
        await stream.aclose()
    return found


def _order(event_id: str | None) -> tuple[int, ...]:
    assert event_id is not None
    return tuple(int(part) for part in event_id.split("-"))
